"""What the ServerApp reports while it runs: nodes connected, rounds, replies (events.jsonl).

:class:`RunProgress` turns what the ServerApp sees into :class:`countyfl.runs.RunEvent`
lines that ``countyfl run`` follows, and bounds the one wait Flower leaves unbounded: its
strategies wait for ``min_available_nodes`` forever (``sample_nodes`` polls every second),
so :class:`ReportingGrid` counts the time the connected nodes stay below the minimum and
stops the run with :class:`NodesMissingError`, which says how many are connected, how many
are needed and what to do, after ``node-wait-seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from countyfl import protocol
from countyfl.errors import CountyflError
from countyfl.federation.grid import PromptGrid, WrappedGrid
from countyfl.runs import EventKind, EventLog, RoundRecord, RunEvent

logger = logging.getLogger(__name__)


class NodesMissingError(CountyflError):
    """Too few nodes stayed connected for longer than the run may wait."""


def institution_of(message: Message) -> str | None:
    """The institution id a reply names itself by (None for an error reply)."""
    if message.has_error():
        return None
    site = message.content.get(protocol.SITE)
    name = site.get(protocol.INSTITUTION_ID) if isinstance(site, ConfigRecord) else None
    return name if isinstance(name, str) else None


def phase_of(message: Message) -> str:
    """``train`` or ``evaluate`` (Flower's message type, without a sub-type)."""
    return message.metadata.message_type.split(".")[0]


class RunProgress:
    """Writes a run's events (when it has a log) and keeps the node wait bounded."""

    def __init__(
        self,
        log: EventLog | None,
        *,
        rounds: int,
        needed: int,
        wait_seconds: float,
        run_id: str = "",
        clock: Callable[[], float] = time.monotonic,
        simulated: bool = False,
    ) -> None:
        self.log = log
        self.rounds = rounds
        self.needed = needed
        self.wait_seconds = wait_seconds
        self.run_id = run_id
        self._clock = clock
        # A simulation's nodes are the Simulation Engine's: the advice differs.
        self.simulated = simulated
        self._connected: int | None = None
        self._short_since: float | None = None
        # The round whose replies are coming in (Flower 1.42 leaves messages' group id
        # empty, so a reply does not say which round it answers).
        self._round: int | None = None

    def emit(self, kind: EventKind, **fields: object) -> None:
        if self.log is None:
            return
        event = RunEvent.model_validate({"kind": kind, "run_id": self.run_id, **fields})
        try:
            self.log.append(event)
        except OSError as error:  # progress is for people; the run itself goes on
            logger.warning("cannot write %s: %s", self.log.path, error)

    def nodes(self, connected: int) -> None:
        """Report a change in the number of connected nodes; stop a wait that is too long."""
        if connected != self._connected:
            self._connected = connected
            self.emit(
                EventKind.NODES,
                connected=connected,
                needed=self.needed,
                wait_seconds=self.wait_seconds,
            )
        if connected >= self.needed:
            self._short_since = None
            return
        now = self._clock()
        if self._short_since is None:
            self._short_since = now
            logger.info("waiting for nodes: %d connected of %d needed", connected, self.needed)
        elif now - self._short_since >= self.wait_seconds:
            shortfall = (
                f"waited {self.wait_seconds:.0f} s for nodes: {connected} connected, "
                f"{self.needed} needed (min-nodes)."
            )
            if self.simulated:
                advice = (
                    " The Simulation Engine starts one node per institution of the scenario: "
                    "set min-nodes to at most the scenario's institutions (or leave it at 0, "
                    "all of them)"
                )
            else:
                advice = (
                    " Start the missing institutions' nodes (`countyfl node start --site "
                    "site.toml --superlink HOST:PORT`; `flwr supernode list` shows which are "
                    "online), or run with fewer (`countyfl run --min-nodes N`, at least "
                    "min-contributors)"
                )
            reason = shortfall + advice
            self.failed(reason)
            raise NodesMissingError(reason)

    def round_start(self, server_round: int, phase: str, asked: int) -> None:
        self._round = server_round
        self.emit(
            EventKind.ROUND_START, round=server_round, rounds=self.rounds, phase=phase, asked=asked
        )

    def reply(self, message: Message) -> None:
        """A reply arrived (reported as it arrives, before it is checked and used)."""
        self.emit(
            EventKind.REPLY,
            round=self._round,
            rounds=self.rounds,
            phase=phase_of(message),
            node=message.metadata.src_node_id,
            institution=institution_of(message),
            reason=message.error.reason if message.has_error() else "",
        )

    def result(
        self,
        server_round: int,
        phase: str,
        node: int,
        institution: str | None,
        accepted: bool,
        reason: str = "",
    ) -> None:
        self.emit(
            EventKind.RESULT,
            round=server_round,
            rounds=self.rounds,
            phase=phase,
            node=node,
            institution=institution,
            accepted=accepted,
            reason=reason,
        )

    def round_end(self, server_round: int, record: RoundRecord) -> None:
        metrics: dict[str, float] = {}
        for name in protocol.EVALUATION_METRICS:
            values = [m[name] for m in record.evaluate.values() if name in m]
            if values:
                metrics[name] = sum(values) / len(values)
        self.emit(
            EventKind.ROUND_END,
            round=server_round,
            rounds=self.rounds,
            trained=len(record.train),
            evaluated=len(record.evaluate),
            failures=list(record.failures),
            metrics=metrics,
        )

    def failed(self, reason: str) -> None:
        self.emit(EventKind.FAILED, reason=reason)

    def finished(self) -> None:
        self.emit(EventKind.FINISHED, rounds=self.rounds)


class ReportingGrid(WrappedGrid):
    """``grid`` whose node count and arriving replies are reported to ``progress``.

    Replies are reported as they arrive when ``grid`` is a :class:`PromptGrid` (which
    pulls them one by one), otherwise when the grid hands them over.
    """

    def __init__(self, grid: Grid, progress: RunProgress) -> None:
        super().__init__(grid)
        self.progress = progress

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self.grid.get_node_ids())
        self.progress.nodes(len(nodes))
        return nodes

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        if isinstance(self.grid, PromptGrid):
            return self.grid.send_and_receive(
                messages, timeout=timeout, on_reply=self.progress.reply
            )
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self.progress.reply(reply)
        return replies

    def send_and_receive_batches(
        self,
        batches: Sequence[Iterable[Message]],
        *,
        timeout: float | None = None,
        fuse: bool = False,
    ) -> list[list[Message]]:
        if isinstance(self.grid, PromptGrid):
            return self.grid.send_and_receive_batches(
                batches, timeout=timeout, on_reply=self.progress.reply, fuse=fuse
            )
        return super().send_and_receive_batches(batches, timeout=timeout, fuse=fuse)
