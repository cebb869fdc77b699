"""FedAvg and FedProx for the county node, recording each institution's metrics per round.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017. FedProx: Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020 (the proximal term is applied by the clients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy import FedProx as FlowerFedProx

from countyfl import protocol
from countyfl.aggregator.history import FederationHistory

RoundCallback = Callable[[int], None]


def _reply_metrics(message: Message) -> tuple[int, dict[str, float]] | None:
    record = message.content.get(protocol.METRICS)
    if not isinstance(record, MetricRecord) or protocol.PARTITION_ID not in record:
        return None
    values = {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
    return int(values.pop(protocol.PARTITION_ID)), values


class RecordingMixin:
    """Keeps a :class:`FederationHistory` of every reply and calls back after each round."""

    history: FederationHistory
    on_round_end: RoundCallback | None
    # (server round, phase) -> node ids a task was sent to
    _sent: dict[tuple[int, str], set[int]]

    def _remember(
        self, server_round: int, phase: str, messages: Iterable[Message]
    ) -> list[Message]:
        sent = list(messages)
        if not hasattr(self, "_sent"):
            self._sent = {}
        self._sent[(server_round, phase)] = {m.metadata.dst_node_id for m in sent}
        return sent

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._remember(
            server_round,
            "train",
            super().configure_train(server_round, arrays, config, grid),  # type: ignore[misc]
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._remember(
            server_round,
            "evaluate",
            super().configure_evaluate(server_round, arrays, config, grid),  # type: ignore[misc]
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
        sent = getattr(self, "_sent", {}).get((server_round, phase), set())
        for node in sorted(sent - answered):
            record.failures.append(f"{phase}: node {node}: no reply (node lost or timed out)")
        for message in replies:
            if message.has_error():
                record.failures.append(
                    f"{phase}: node {message.metadata.src_node_id}: {message.error.reason}"
                )
                forwarded.append(message)
                continue
            parsed = _reply_metrics(message)
            if parsed is None:
                record.failures.append(
                    f"{phase}: node {message.metadata.src_node_id}: reply without metrics"
                )
                continue
            if phase == "train" and not isinstance(
                message.content.get(protocol.ARRAYS), ArrayRecord
            ):
                record.failures.append(
                    f"{phase}: node {message.metadata.src_node_id}: reply without weights"
                )
                continue
            partition_id, values = parsed
            getattr(record, phase)[partition_id] = values
            site = message.content.get(protocol.SITE)
            if isinstance(site, ConfigRecord) and isinstance(
                site.get(protocol.INSTITUTION_ID), str
            ):
                record.institutions[partition_id] = str(site[protocol.INSTITUTION_ID])
            forwarded.append(message)
        return forwarded

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._record(server_round, list(replies), "train")
        return super().aggregate_train(server_round, accepted)  # type: ignore[misc,no-any-return]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        accepted = self._record(server_round, list(replies), "evaluate")
        result = super().aggregate_evaluate(server_round, accepted)  # type: ignore[misc]
        if self.on_round_end is not None:
            self.on_round_end(server_round)
        return result  # type: ignore[no-any-return]


class FedAvg(RecordingMixin, FlowerFedAvg):
    """Federated averaging weighted by each institution's number of training examples."""

    def __init__(self, *, on_round_end: RoundCallback | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = FederationHistory()
        self.on_round_end = on_round_end


class FedProx(RecordingMixin, FlowerFedProx):
    """FedAvg aggregation; sends ``proximal-mu`` so that clients add the proximal term."""

    def __init__(self, *, on_round_end: RoundCallback | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = FederationHistory()
        self.on_round_end = on_round_end
