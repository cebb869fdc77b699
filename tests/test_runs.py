"""The run folder's event log: one writer appends whole lines, a follower reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from countyfl.runs import EventKind, EventLog, EventReader, RunEvent, RunFolderError


def test_a_follower_sees_each_event_once_and_waits_for_a_half_written_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.read_new() == []  # the ServerApp has not started yet
    log = EventLog(path)
    log.append(RunEvent(kind=EventKind.NODES, run_id="7", connected=1, needed=3))
    [event] = reader.read_new()
    assert (event.kind, event.connected, event.needed, event.run_id) == (EventKind.NODES, 1, 3, "7")
    assert reader.read_new() == []
    # A line caught half-written is read once it is whole.
    line = RunEvent(kind=EventKind.ROUND_START, round=1, rounds=2, phase="train", asked=3)
    text = line.model_dump_json(by_alias=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text[:10])
    assert reader.read_new() == []
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text[10:] + "\n")
    [event] = reader.read_new()
    assert (event.kind, event.round, event.asked) == (EventKind.ROUND_START, 1, 3)


def test_a_follower_can_skip_the_events_of_earlier_runs(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path).append(RunEvent(kind=EventKind.FINISHED, run_id="1", rounds=2))
    reader = EventReader(path, skip_existing=True)
    EventLog(path).append(RunEvent(kind=EventKind.NODES, run_id="2", connected=0, needed=2))
    assert [e.run_id for e in reader.read_new()] == ["2"]


def test_a_line_that_is_not_an_event_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path).append(RunEvent(kind=EventKind.FINISHED, rounds=1))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"kind": "explosion"}\n')
    with pytest.raises(RunFolderError, match=r"events\.jsonl: line 2 is not a run event"):
        EventReader(path).read_new()
