"""PromptGrid: the same messages and timeout as Flower's grid, replies collected promptly."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from countyfl.federation.grid import LONGEST_WAIT, PromptGrid


class FakeGrid:
    """Answers message i at its ``ready[i]``-th pull; records what it was asked."""

    def __init__(self, ready: dict[str, int]) -> None:
        self.ready = ready
        self.pushed: list[list[Any]] = []
        self.pulls = 0
        self.other_calls: list[str] = []

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        batch = list(messages)
        self.pushed.append(batch)
        return [m.id for m in batch]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        wanted = set(message_ids)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i, at in self.ready.items()
            if i in wanted and at == self.pulls
        ]

    def get_node_ids(self) -> list[int]:
        self.other_calls.append("get_node_ids")
        return [7, 8]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def _grid(ready: dict[str, int]) -> tuple[PromptGrid, FakeGrid, FakeClock]:
    inner, clock = FakeGrid(ready), FakeClock()
    return PromptGrid(inner, clock=clock, sleep=clock.sleep), inner, clock  # type: ignore[arg-type]


def _messages(*ids: str) -> list[Any]:
    return [SimpleNamespace(id=i) for i in ids]


def test_every_reply_is_collected_once_and_the_messages_are_pushed_once() -> None:
    grid, inner, clock = _grid({"a": 1, "b": 4, "c": 6})
    replies = grid.send_and_receive(_messages("a", "b", "c"))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b", "c"]
    assert len(inner.pushed) == 1 and inner.pulls == 6
    # Flower's grid would have slept 3 s between each of these pulls (15 s); this one
    # starts at tens of milliseconds and never pauses longer than LONGEST_WAIT.
    assert sum(clock.sleeps) < 3.0
    assert max(clock.sleeps) <= LONGEST_WAIT


def test_the_pause_backs_off_to_its_longest_while_institutions_train() -> None:
    grid, _, clock = _grid({"a": 30})
    grid.send_and_receive(_messages("a"))
    assert clock.sleeps == sorted(clock.sleeps)
    assert clock.sleeps[-1] == LONGEST_WAIT


def test_a_timeout_returns_the_replies_received_so_far() -> None:
    grid, _, clock = _grid({"a": 2, "b": 10_000})
    replies = grid.send_and_receive(_messages("a", "b"), timeout=5.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert clock.now == pytest.approx(5.0)  # never sleeps past the deadline


def test_batches_are_all_pushed_before_any_pull_and_answered_each_on_its_own() -> None:
    grid, inner, _ = _grid({"e1": 2, "e2": 1, "t1": 3, "t2": 1})
    pulled_at_push: list[int] = []
    push = inner.push_messages

    def pushing(messages: Iterable[Any]) -> list[str]:
        pulled_at_push.append(inner.pulls)
        return push(messages)

    inner.push_messages = pushing  # type: ignore[method-assign]
    evaluate, train = grid.send_and_receive_batches(
        [_messages("e1", "e2"), _messages("t1", "t2")], timeout=60.0
    )
    assert pulled_at_push == [0, 0]  # both batches out before the first pull
    assert sorted(r.metadata.reply_to_message_id for r in evaluate) == ["e1", "e2"]
    assert sorted(r.metadata.reply_to_message_id for r in train) == ["t1", "t2"]
    assert inner.pulls == 3  # one deadline and one polling loop for both


def test_every_other_call_goes_to_the_wrapped_grid() -> None:
    grid, inner, _ = _grid({})
    assert list(grid.get_node_ids()) == [7, 8] and inner.other_calls == ["get_node_ids"]
    assert grid.send_and_receive([]) == [] and inner.pulls == 0
