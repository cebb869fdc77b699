"""A strategy wrapper that keeps every institution's reply in a :class:`FederationHistory`.

As Flower composes its own features (``DifferentialPrivacyServerSideFixedClipping`` wraps
any strategy), :class:`RecordingStrategy` wraps FedAvg, FedProx or their encrypted
versions: it records what every node replied (metrics only, never weights), notes nodes
that were sent a task and never answered, holds back replies that would make the inner
strategy abandon the whole aggregation, and calls back after each round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from countyfl import protocol
from countyfl.federation.progress import RunProgress, institution_of
from countyfl.runs import FederationHistory

RoundCallback = Callable[[int], None]


def _reply_metrics(message: Message) -> tuple[int, dict[str, float]] | None:
    record = message.content.get(protocol.METRICS)
    if not isinstance(record, MetricRecord) or protocol.PARTITION_ID not in record:
        return None
    values = {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
    return int(values.pop(protocol.PARTITION_ID)), values


def too_few_contributors(count: int, minimum: int) -> str:
    """Why an aggregate of ``count`` institutions is not used (empty if it may be)."""
    if count >= minimum:
        return ""
    return (
        f"train: the round's aggregate of {count} institution(s) was discarded, never "
        f"decrypted or used: the task's minimum is {minimum} contributors; the global model "
        "stays as it was"
    )


def record_discard(history: FederationHistory, server_round: int, reason: str) -> None:
    """Record that a round's aggregate was discarded (too few contributors)."""
    history.round(server_round).failures.append(reason)


def record_rejection(
    history: FederationHistory, server_round: int, message: Message, reason: str
) -> None:
    """Record that a reply was dropped after it was recorded: a failure, not a result."""
    record = history.round(server_round)
    record.failures.append(f"train: node {message.metadata.src_node_id}: {reason}")
    parsed = _reply_metrics(message)
    if parsed is not None:
        record.train.pop(parsed[0], None)


MAX_CALIBRATION_BYTES = 4 * 1024 * 1024
"""The largest encrypted calibration reply kept (one CKKS vector of three values: ~130 KB)."""


def _calibration_ciphertext(record: ArrayRecord) -> bytes | None:
    """The serialized CKKS vector of a reply's calibration sums, if well formed."""
    if list(record) != [protocol.CIPHERTEXT]:
        return None
    array = record[protocol.CIPHERTEXT]
    if array.dtype != "uint8" or len(array.shape) != 1:
        return None
    try:
        data = array.numpy().tobytes()
    except (TypeError, ValueError):  # bytes that are not what the array says it holds
        return None
    return data if 0 < len(data) <= MAX_CALIBRATION_BYTES else None


class RecordingStrategy(Strategy):
    """Wraps ``strategy``; records every reply in ``history`` and calls ``on_round_end``."""

    def __init__(
        self,
        strategy: Strategy,
        history: FederationHistory | None = None,
        on_round_end: RoundCallback | None = None,
        min_contributors: int = 1,
        keep_calibration_ciphertexts: bool = False,
    ) -> None:
        self.strategy = strategy
        self.min_contributors = min_contributors
        self.keep_calibration_ciphertexts = keep_calibration_ciphertexts
        self.history = history if history is not None else FederationHistory()
        self.on_round_end = on_round_end
        # Reports rounds and each reply's fate as they happen (set by the ServerApp).
        self.progress: RunProgress | None = None
        # (server round, phase) -> node ids a task was sent to
        self._sent: dict[tuple[int, str], set[int]] = {}
        # Distributed noise only: partition id -> a site's encrypted calibration sums, of
        # calibration_round, the latest round that had any (the county adds them and never
        # reads one)
        self.calibration_ciphertexts: dict[int, bytes] = {}
        self.calibration_round = 0

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.strategy!r})"

    def summary(self) -> None:
        self.strategy.summary()

    def _remember(
        self, server_round: int, phase: str, messages: Iterable[Message]
    ) -> list[Message]:
        sent = list(messages)
        self._sent[(server_round, phase)] = {m.metadata.dst_node_id for m in sent}
        if self.progress is not None:
            self.progress.round_start(server_round, phase, len(sent))
        return sent

    def _report(self, server_round: int, phase: str, replies: list[Message]) -> None:
        """Report whether each reply was used, once the round's phase has aggregated.

        A training reply recorded but then dropped (the encrypted strategy's checks)
        is no longer in the round's record; its failure line says why.
        """
        if self.progress is None:
            return
        record = self.history.round(server_round)
        kept = getattr(record, phase)
        answered = set()
        for message in replies:
            node = message.metadata.src_node_id
            answered.add(node)
            institution = institution_of(message)
            parsed = None if message.has_error() else _reply_metrics(message)
            if parsed is not None and parsed[0] in kept:
                self.progress.result(server_round, phase, node, institution, True)
                continue
            prefix = f"{phase}: node {node}: "
            reasons = [f[len(prefix) :] for f in record.failures if f.startswith(prefix)]
            self.progress.result(
                server_round, phase, node, institution, False, reasons[-1] if reasons else ""
            )
        for node in sorted(self._sent.get((server_round, phase), set()) - answered):
            self.progress.result(
                server_round, phase, node, None, False, "no reply (node lost or timed out)"
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._remember(
            server_round, "train", self.strategy.configure_train(server_round, arrays, config, grid)
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._remember(
            server_round,
            "evaluate",
            self.strategy.configure_evaluate(server_round, arrays, config, grid),
        )

    def _record(self, server_round: int, replies: list[Message], phase: str) -> list[Message]:
        """Record every reply; return those to aggregate (good ones, and errors for the log).

        A reply without metrics (or, in training, without weights) is recorded as a failure
        and held back: passed on, it would make Flower abandon the whole aggregation.
        """
        record = self.history.round(server_round)
        forwarded: list[Message] = []
        # A node that was sent a task and never answered (killed, cut off, timed out) is a
        # loss to record, not a silence.
        answered = {m.metadata.src_node_id for m in replies}
        for node in sorted(self._sent.get((server_round, phase), set()) - answered):
            record.failures.append(f"{phase}: node {node}: no reply (node lost or timed out)")
        for message in replies:
            node = message.metadata.src_node_id
            if message.has_error():
                record.failures.append(f"{phase}: node {node}: {message.error.reason}")
                forwarded.append(message)
                continue
            parsed = _reply_metrics(message)
            if parsed is None:
                record.failures.append(f"{phase}: node {node}: reply without metrics")
                continue
            arrays = message.content.get(protocol.ARRAYS)
            if phase == "train" and not isinstance(arrays, ArrayRecord):
                record.failures.append(f"{phase}: node {node}: reply without weights")
                continue
            partition_id, values = parsed
            getattr(record, phase)[partition_id] = values
            encrypted = message.content.get(protocol.CALIBRATION_SUMS)
            if phase == "evaluate" and encrypted is not None:
                self._keep_calibration(server_round, node, partition_id, encrypted)
            site = message.content.get(protocol.SITE)
            name = site.get(protocol.INSTITUTION_ID) if isinstance(site, ConfigRecord) else None
            if isinstance(name, str):
                record.institutions[partition_id] = name
            forwarded.append(message)
        return forwarded

    def _keep_calibration(
        self, server_round: int, node: int, partition_id: int, encrypted: object
    ) -> None:
        """Keep a reply's encrypted calibration sums (distributed noise), or say why not."""
        record = self.history.round(server_round)
        ciphertext = (
            _calibration_ciphertext(encrypted) if isinstance(encrypted, ArrayRecord) else None
        )
        if not self.keep_calibration_ciphertexts:
            record.failures.append(
                f"evaluate: node {node}: encrypted calibration sums the task does not ask for "
                "(left out)"
            )
        elif ciphertext is None:
            record.failures.append(
                f"evaluate: node {node}: encrypted calibration sums that are not one "
                f"ciphertext of at most {MAX_CALIBRATION_BYTES} bytes (left out)"
            )
        else:
            if server_round != self.calibration_round:
                self.calibration_ciphertexts, self.calibration_round = {}, server_round
            self.calibration_ciphertexts[partition_id] = ciphertext

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        received = list(replies)
        accepted = self._record(server_round, received, "train")
        # An aggregate of too few institutions is not made at all (the encrypted strategy
        # checks again after its own rejections).
        good = sum(not m.has_error() for m in accepted)
        refusal = too_few_contributors(good, self.min_contributors)
        if good and refusal:
            record_discard(self.history, server_round, refusal)
            self._report(server_round, "train", received)
            return None, None
        result = self.strategy.aggregate_train(server_round, accepted)
        self._report(server_round, "train", received)
        return result

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        received = list(replies)
        accepted = self._record(server_round, received, "evaluate")
        result = self.strategy.aggregate_evaluate(server_round, accepted)
        self._report(server_round, "evaluate", received)
        if self.progress is not None:
            self.progress.round_end(server_round, self.history.round(server_round))
        if self.on_round_end is not None:
            self.on_round_end(server_round)
        return result
