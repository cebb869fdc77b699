"""``countyfl run`` against a stand-in SuperLink: what the operator sees while a run goes on.

The stand-in answers the ``flwr`` calls the command makes (``supernode list``, ``run``,
``ls``, ``stop``) and, as the county's ServerApp does, appends the run's events to the
output folder's ``events.jsonl`` while the run is "running" (real EventLog, real files,
the real command through click). The real SuperLink, nodes and ServerApp are exercised by
tests/federation/test_deployment.py (e2e).
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from countyfl.cli import app
from countyfl.deployment import processes
from countyfl.runs import EVENTS_FILE, EventKind, EventLog, RunEvent

RUN_ID = "4242"


def _round(server_round: int, rounds: int) -> list[RunEvent]:
    common: dict[str, Any] = {"run_id": RUN_ID, "round": server_round, "rounds": rounds}
    events = [RunEvent(kind=EventKind.ROUND_START, phase="train", asked=3, **common)]
    for node, institution in ((11, "cleveland"), (12, "hungary")):
        reply = RunEvent(
            kind=EventKind.REPLY, phase="train", node=node, institution=institution, **common
        )
        events.append(reply)
    events.append(
        RunEvent(kind=EventKind.REPLY, phase="train", node=13, reason="budget spent", **common)
    )
    events += [
        RunEvent(
            kind=EventKind.RESULT,
            phase="train",
            node=11,
            institution="cleveland",
            accepted=True,
            **common,
        ),
        RunEvent(
            kind=EventKind.RESULT,
            phase="train",
            node=12,
            institution="hungary",
            accepted=True,
            **common,
        ),
        RunEvent(
            kind=EventKind.RESULT,
            phase="train",
            node=13,
            accepted=False,
            reason="switzerland: privacy budget spent",
            **common,
        ),
        RunEvent(
            kind=EventKind.ROUND_END,
            trained=2,
            evaluated=3,
            failures=["train: node 13: switzerland: privacy budget spent"],
            metrics={"loss": 0.5, "accuracy": 0.75},
            **common,
        ),
    ]
    return events


class StandInSuperLink:
    """Answers ``_flwr`` like Flower's CLI would, and plays a run's events into the folder."""

    def __init__(self, statuses: dict[str, str], events: Sequence[RunEvent], end: str) -> None:
        self.statuses = statuses
        self.events = list(events)
        self.end = end
        self.calls: list[tuple[str, ...]] = []
        self.run_config: dict[str, Any] = {}
        self.output: Path | None = None
        self.player: threading.Thread | None = None
        self.stopped = False

    def _play(self) -> None:
        assert self.output is not None
        log = EventLog(self.output / EVENTS_FILE)
        for event in self.events:
            log.append(event)

    def __call__(self, state_dir: Path, *args: str, timeout: float = 120) -> Any:
        self.calls.append(args)
        if args[:2] == ("supernode", "list"):
            nodes = [{"node-id": n, "status": s} for n, s in self.statuses.items()]
            return {"success": True, "nodes": nodes}
        if args[0] == "run":
            # Flower reads the overrides from a TOML file (the path is the argument).
            config_file = Path(args[args.index("--run-config") + 1])
            assert config_file.suffix == ".toml"
            self.run_config = tomllib.loads(config_file.read_text(encoding="utf-8"))
            self.output = Path(self.run_config["output-dir"])
            self.player = threading.Thread(target=self._play)
            self.player.start()
            return {"success": True, "run-id": int(RUN_ID)}
        if args[0] == "ls":
            assert self.player is not None
            self.player.join()  # "running" until the ServerApp has written everything
            return {"success": True, "runs": [{"status": self.end}]}
        if args[0] == "stop":
            self.stopped = True
            return {"success": True}
        raise AssertionError(f"unexpected flwr call {args}")


REGISTERED = {"11": "online", "12": "online", "13": "offline"}


def _run(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    link: StandInSuperLink,
    *options: str,
) -> Result:
    monkeypatch.setattr(processes, "_flwr", link)
    # A folder with a pyproject.toml stands in for the Flower app (it is never built here).
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "pyproject.toml").write_text("", encoding="utf-8")
    arguments = [
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "-o",
        str(tmp_path / "out"),
        "--app",
        str(tmp_path / "app"),
        "-c",
        "dp=false",
        *options,
    ]
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, arguments)


def test_run_shows_nodes_rounds_and_each_reply_as_it_happens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events = [
        RunEvent(kind=EventKind.NODES, run_id=RUN_ID, connected=2, needed=3, wait_seconds=600),
        RunEvent(kind=EventKind.NODES, run_id=RUN_ID, connected=3, needed=3, wait_seconds=600),
        *_round(1, 2),
        *_round(2, 2),
        RunEvent(kind=EventKind.FINISHED, run_id=RUN_ID, rounds=2),
    ]
    link = StandInSuperLink(REGISTERED, events, "finished:completed")
    result = _run(monkeypatch, tmp_path, link)

    assert result.exit_code == 0, result.output
    out = result.output
    # By default the run waits for every registered node, and says so before it starts.
    assert link.run_config["min-nodes"] == 3
    assert "nodes: 2 of 3 registered are online now; the run waits for 3" in out
    assert f"run {RUN_ID}: submitted" in out
    assert "nodes: 2 of 3 connected (min-nodes 3), waiting up to 600 s" in out
    assert "nodes: 3 of 3 connected (min-nodes 3)\n" in out
    # Output that is not a terminal gets a line per arriving reply, then each one's fate.
    assert "round 1/2 train: asked 3 node(s)" in out
    assert "round 1/2 train: reply 1/3 from cleveland" in out
    assert "round 1/2 train: reply 3/3 from node 13 (error: budget spent)" in out
    assert "round 2/2 train: hungary accepted" in out
    assert "round 2/2 train: node 13 rejected: switzerland: privacy budget spent" in out
    assert "round 2/2 done: 2 trained, 3 evaluated; mean of institutions: loss 0.500" in out
    assert "all 2 round(s) done" in out
    assert f"run {RUN_ID}: finished:completed" in out
    lines = out.splitlines()
    assert lines.index("round 1/2 train: asked 3 node(s)") < lines.index(
        "round 1/2 train: cleveland accepted"
    )


class FlakySuperLink(StandInSuperLink):
    """A stand-in whose status polls fail ``failures`` times before answering."""

    def __init__(self, failures: int, *args: Any) -> None:
        super().__init__(*args)
        self.failures = failures
        self.polls = 0

    def __call__(self, state_dir: Path, *args: str, timeout: float = 120) -> Any:
        if args and args[0] == "ls":
            self.polls += 1
            if self.polls <= self.failures:
                raise processes.DeploymentError("`flwr ls` did not answer in 120 s")
        return super().__call__(state_dir, *args, timeout=timeout)


def test_a_lost_status_poll_is_asked_again_and_a_superlink_that_never_answers_ends_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events = [*_round(1, 1), RunEvent(kind=EventKind.FINISHED, run_id=RUN_ID, rounds=1)]
    monkeypatch.setattr(processes.time, "sleep", lambda _: None)  # polls without waiting
    flaky = FlakySuperLink(processes.STATUS_ATTEMPTS - 1, REGISTERED, events, "finished:completed")
    (tmp_path / "flaky").mkdir()
    result = _run(monkeypatch, tmp_path / "flaky", flaky)
    assert result.exit_code == 0, result.output
    assert flaky.polls == processes.STATUS_ATTEMPTS
    assert f"run {RUN_ID}: finished:completed" in result.output

    gone = FlakySuperLink(10**6, REGISTERED, events, "finished:completed")
    (tmp_path / "gone").mkdir()
    result = _run(monkeypatch, tmp_path / "gone", gone)
    assert result.exit_code != 0
    assert gone.polls == processes.STATUS_ATTEMPTS
    assert "did not answer" in result.output


def test_a_run_stopped_for_missing_nodes_exits_1_with_the_servers_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reason = "waited 600 s for nodes: 1 connected, 2 needed (min-nodes). Start the missing"
    events = [
        RunEvent(kind=EventKind.NODES, run_id=RUN_ID, connected=1, needed=2),
        RunEvent(kind=EventKind.FAILED, run_id=RUN_ID, reason=reason),
    ]
    link = StandInSuperLink(REGISTERED, events, "finished:failed")
    result = _run(monkeypatch, tmp_path, link, "--min-nodes", "2")

    assert result.exit_code == 1, result.output
    assert link.run_config["min-nodes"] == 2
    assert "the run waits for 2 (--min-nodes)" in result.output
    assert f"error: run {RUN_ID}: {reason}" in result.output


def test_events_of_an_earlier_run_in_the_same_folder_are_not_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    EventLog(tmp_path / "out" / EVENTS_FILE).append(
        RunEvent(kind=EventKind.FAILED, run_id="1", reason="an old run's failure")
    )
    events = [RunEvent(kind=EventKind.FINISHED, run_id=RUN_ID, rounds=2)]
    link = StandInSuperLink(REGISTERED, events, "finished:completed")
    result = _run(monkeypatch, tmp_path, link)
    assert result.exit_code == 0, result.output
    assert "old run" not in result.output


@pytest.mark.parametrize(
    ("statuses", "options", "expected"),
    [
        ({}, [], "no SuperNode is registered at the SuperLink"),
        ({"11": "online", "12": "unregistered"}, [], "1 node(s) (every registered node), fewer"),
        (REGISTERED, ["--min-nodes", "4"], "--min-nodes 4, but only 3 node(s) are registered"),
        (REGISTERED, ["--min-nodes", "1"], "wait for 1 node(s) (--min-nodes), fewer than"),
        (REGISTERED, ["-c", "min-nodes=1"], "min-nodes 1 is below min-contributors 2"),
        (REGISTERED, ["--min-nodes", "2", "-c", "min-nodes=2"], "min-nodes is given twice"),
    ],
    ids=[
        "none-registered",
        "fewer-than-contributors",
        "more-than-registered",
        "option-below-contributors",
        "config",
        "twice",
    ],
)
def test_a_minimum_that_can_never_be_met_is_refused_before_submitting(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    statuses: dict[str, str],
    options: list[str],
    expected: str,
) -> None:
    link = StandInSuperLink(statuses, [], "finished:completed")
    result = _run(monkeypatch, tmp_path, link, *options)
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert not any(call[0] == "run" for call in link.calls)


def test_on_a_terminal_replies_move_a_live_bar_instead_of_printing_lines() -> None:
    import io

    from rich.console import Console

    from countyfl.cli.deployment import RunDisplay

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, highlight=False)
    events = _round(1, 1)
    with RunDisplay(console) as display:
        for event in events[:3]:  # the round starts; cleveland and hungary reply
            display(event)
        display.progress.refresh()
        live = screen.getvalue()
        for event in events[3:]:
            display(event)
    shown = screen.getvalue()
    assert "round 1/1 train: replies" in live and "2/3" in live
    assert "reply 1/3 from" not in shown
    assert "round 1/1 train: cleveland" in shown and "accepted" in shown
    assert "node 13" in shown and "rejected" in shown


def test_a_run_that_shows_no_event_says_where_it_looks_for_them_once(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from countyfl.cli.deployment import RunDisplay

    screen = io.StringIO()
    now = [0.0]
    events = tmp_path / "out" / EVENTS_FILE
    display = RunDisplay(Console(file=screen, width=250), events, clock=lambda: now[0])
    with display:
        for status in ("submitted", "starting", "running", "running"):
            display.status(RUN_ID, status)
            now[0] += 30
        assert "no event" not in screen.getvalue()  # running for 30 s only
        for _ in range(3):
            display.status(RUN_ID, "running")
            now[0] += 30
    shown = screen.getvalue()
    assert [line for line in shown.splitlines() if line.startswith(f"run {RUN_ID}")] == [
        f"run {RUN_ID}: submitted",
        f"run {RUN_ID}: starting",
        f"run {RUN_ID}: running",
    ]
    assert shown.count("no event from the ServerApp after 60 s of running") == 1
    assert str(events) in " ".join(shown.split())
