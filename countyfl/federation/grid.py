"""A Grid that collects replies as soon as they arrive, for the ServerApp.

Flower 1.42's deployment grid (``flwr.superlink.grid.http_grid``) pushes a round's
messages and then pulls replies every 3 seconds, so a round in deployment waits up to
3 s per phase after the last institution has answered. :class:`PromptGrid` wraps any
grid and implements ``send_and_receive`` with the grid's own public ``push_messages``
and ``pull_messages``, polling quickly at first and backing off to a quarter of a second
while institutions are still training: the same messages, the same timeout, replies
seen within a fraction of a second. Every other call goes to the wrapped grid unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from countyfl.federation.fused import pair as pair_instructions
from countyfl.federation.fused import split as split_reply

FIRST_WAIT = 0.02
"""Seconds before the first pull after a push (replies of warm sites come in tens of ms)."""
LONGEST_WAIT = 0.25
"""The longest pause between two pulls: a pull is one small request to the SuperLink
(four a second while institutions train; at 1 s the last reply waited 0.5 s on average)."""


class WrappedGrid(Grid):
    """A Grid that hands every call to ``grid``; subclasses change what they need."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)

    def send_and_receive_batches(
        self,
        batches: Sequence[Iterable[Message]],
        *,
        timeout: float | None = None,
        fuse: bool = False,
    ) -> list[list[Message]]:
        """The replies to each batch; here one batch after the other, never fused
        (PromptGrid sends them together)."""
        return [list(self.send_and_receive(batch, timeout=timeout)) for batch in batches]


class PromptGrid(WrappedGrid):
    """``grid`` with a ``send_and_receive`` that pulls replies promptly (see module)."""

    def __init__(
        self,
        grid: Grid,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(grid)
        self._clock = clock
        self._sleep = sleep

    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
        on_reply: Callable[[Message], None] | None = None,
    ) -> Iterable[Message]:
        """Push ``messages``; pull replies until all are in or ``timeout`` seconds pass.

        As Flower's grids do, ``timeout`` None waits for every reply, and a timeout gives
        the replies received so far. ``on_reply`` is called with each reply as it arrives.
        """
        return self.send_and_receive_batches([messages], timeout=timeout, on_reply=on_reply)[0]

    def send_and_receive_batches(
        self,
        batches: Sequence[Iterable[Message]],
        *,
        timeout: float | None = None,
        on_reply: Callable[[Message], None] | None = None,
        fuse: bool = False,
    ) -> list[list[Message]]:
        """Push every batch at once, in order; the replies to each batch, as
        :meth:`send_and_receive` collects them (one deadline for all).

        A node answers its messages one after the other, so two batches sent together
        (a round's evaluation and the next round's training, :mod:`countyfl.federation.
        rounds`) cost a node one wait for work instead of two. With ``fuse`` (two
        batches: evaluate, then train), a node asked both with the same model gets them
        as one message (:mod:`countyfl.federation.fused`), whose reply is split back into
        the reply to each.
        """
        lists = [list(batch) for batch in batches]
        fused: list[tuple[Message, Message, Message]] = []
        if fuse and len(lists) == 2:
            fused, evaluate, train = pair_instructions(lists[0], lists[1])
            lists = [evaluate, train]
        batch_of: dict[str, int] = {}
        parts_of: dict[str, tuple[Message, Message]] = {}
        if fused:
            pushed = self._push([both for both, _, _ in fused])
            for message_id, position in pushed:
                parts_of[message_id] = (fused[position][1], fused[position][2])
        for index, batch in enumerate(lists):
            for message_id, _ in self._push(batch):
                batch_of[message_id] = index
        waiting = set(batch_of) | set(parts_of)
        deadline = None if timeout is None else self._clock() + timeout
        replies: list[list[Message]] = [[] for _ in batches]
        wait = FIRST_WAIT
        while waiting:
            for reply in self.grid.pull_messages(set(waiting)):
                answered = reply.metadata.reply_to_message_id
                if answered not in waiting:
                    continue
                waiting.discard(answered)
                if answered in parts_of:
                    received = list(enumerate(split_reply(reply, *parts_of[answered])))
                else:
                    received = [(batch_of[answered], reply)]
                for index, message in received:
                    replies[index].append(message)
                    if on_reply is not None:
                        on_reply(message)
            if not waiting:
                break
            if deadline is not None and self._clock() >= deadline:
                break
            pause = wait if deadline is None else min(wait, max(deadline - self._clock(), 0.0))
            self._sleep(pause)
            wait = min(wait * 2, LONGEST_WAIT)
        return replies

    def _push(self, messages: list[Message]) -> list[tuple[str, int]]:
        """Push ``messages``; the id of each one pushed, with its position.

        Flower's grids return the ids of the messages they stored, leaving out any they
        could not (a node not in the run, a request the SuperLink refused): such a message
        gets no reply, as with Flower's own ``send_and_receive``.
        """
        if not messages:
            return []
        ids = [str(i) for i in self.grid.push_messages(messages)]
        if len(ids) == len(messages) and all(ids):
            return [(message_id, n) for n, message_id in enumerate(ids)]
        stored = {i for i in ids if i}
        return [
            (m.metadata.message_id, n)
            for n, m in enumerate(messages)
            if m.metadata.message_id and m.metadata.message_id in stored
        ]
