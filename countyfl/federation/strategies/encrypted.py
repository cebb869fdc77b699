"""Encrypted FedAvg: the county node adds CKKS ciphertexts it cannot read.

Each institution replies with Enc(n_i w_i) (see :mod:`countyfl.privacy.he.codec`); the
strategy checks every reply (key fingerprint, number of values and chunks, chunk sizes,
bytes that deserialise), drops those that fail (telling ``on_reject``, which records them),
adds the rest with the PUBLIC context and sends Enc(sum n_i w_i) with sum n_i to the next
round. It never holds the secret key: it loads its context with ``load_public_context``,
which refuses a context that has one. FedAvg: McMahan et al., AISTATS 2017; CKKS: Cheon
et al., 2017.

The sum follows the county's levels: the updates of each township (its health centre and
village clinics, as each reply names its township) are added into the township's partial
sum, and the partial sums into the county's total (:func:`add_by_level`). A total of
fewer than ``min_contributors`` valid updates is discarded, never sent and so never
decrypted (``on_discard`` hears of it); the round keeps the previous global model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from countyfl import protocol
from countyfl.federation.strategies.recording import too_few_contributors
from countyfl.privacy.he.codec import (
    PACKING_COMPLEX,
    CodecError,
    EncryptedUpdate,
    add_by_level,
    check_packed,
    deserialize,
    expected_chunks,
    range_problem,
    slot_count,
)
from countyfl.privacy.he.keys import fingerprint, load_public_context
from countyfl.privacy.he.wire import arrays_to_update, update_to_arrays

RejectCallback = Callable[[int, Message, str], None]
"""(server round, the rejected reply, why) -> None."""
DiscardCallback = Callable[[int, str], None]
"""(server round, why the round's aggregate was discarded) -> None."""


def township_of(message: Message) -> str:
    """The township a reply names (empty if none): the level its update is added at."""
    site = message.content.get(protocol.SITE)
    township = site.get(protocol.TOWNSHIP) if isinstance(site, ConfigRecord) else None
    return township if isinstance(township, str) else ""


class EncryptedFedAvg(FedAvg):
    """FedAvg over CKKS ciphertexts with the public context only.

    ``on_reject`` hears of every reply the checks drop (by default nobody does; wrapped in
    a :class:`~countyfl.federation.strategies.recording.RecordingStrategy`, the history
    records it).
    """

    def __init__(
        self,
        *,
        public_context_path: Path,
        num_values: int,
        on_reject: RejectCallback | None = None,
        min_contributors: int = 1,
        on_discard: DiscardCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.on_reject = on_reject
        self.on_discard = on_discard
        self.min_contributors = min_contributors
        self.context = load_public_context(public_context_path)
        self.fingerprint = fingerprint(self.context)
        self.slots = slot_count(self.context)
        self.num_values = num_values

    def _check(self, update: EncryptedUpdate) -> None:
        if update.key_fingerprint != self.fingerprint:
            raise CodecError("encrypted under another key (fingerprint differs)")
        if update.num_values != self.num_values:
            raise CodecError(f"{update.num_values} values, the model has {self.num_values}")
        if update.packing != PACKING_COMPLEX:
            # Updates of different packings add up to garbage: one packing per federation.
            raise CodecError(f"packed {update.packing!r}; this aggregator adds {PACKING_COMPLEX!r}")
        expected = expected_chunks(self.num_values, PACKING_COMPLEX, self.slots)
        if len(update.chunks) != expected:
            raise CodecError(f"{len(update.chunks)} chunks, expected {expected}")
        if update.num_examples <= 0:
            raise CodecError("non-positive example count")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        vectors, counts, contents, townships = [], [], [], []
        for message in replies:
            if message.has_error():
                continue
            try:
                arrays = message.content.get(protocol.ARRAYS)
                if not isinstance(arrays, ArrayRecord):
                    raise CodecError("the reply carries no arrays")
                update = arrays_to_update(arrays)
                self._check(update)
                # Deserialising and check_packed are the last checks (bytes that are not a
                # ciphertext under this key; a vector of another size, scale or level,
                # which would make the sum fail for everyone); the vectors are kept, so
                # each update is read only once.
                deserialized = deserialize(self.context, update)
                check_packed(self.context, deserialized)
                vectors.append(deserialized)
            except CodecError as error:
                # Rejected, reported, and the round goes on without it.
                if self.on_reject is not None:
                    self.on_reject(server_round, message, f"rejected: {error}")
                continue
            counts.append(update.num_examples)
            contents.append(message.content)
            townships.append(township_of(message))
        if not vectors:
            return None, None
        refusal = too_few_contributors(len(vectors), self.min_contributors)
        out_of_range = range_problem(len(vectors), sum(counts))
        if out_of_range and not refusal:
            refusal = f"train: the round's aggregate was discarded, never made: {out_of_range}"
        if refusal:
            if self.on_discard is not None:
                self.on_discard(server_round, refusal)
            return None, None
        groups: dict[str, list[list[Any]]] = {}
        for township, vector in zip(townships, vectors, strict=True):
            groups.setdefault(township, []).append(vector)
        total = add_by_level(
            list(groups.values()), self.num_values, sum(counts), self.fingerprint, PACKING_COMPLEX
        )
        # Metrics by the same weight as the updates (each site's aggregation weight).
        metrics = self.train_metrics_aggr_fn(contents, protocol.AGGREGATION_WEIGHT)
        return update_to_arrays(total), metrics


class EncryptedFedProx(EncryptedFedAvg):
    """FedProx over CKKS: the aggregation is FedAvg's; clients add the proximal term.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020. The anchor
    of the proximal term is the global model each client decrypts at the start of a round,
    so nothing about it needs the server to read a weight.
    """

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        if proximal_mu < 0:
            raise ValueError(f"proximal-mu must be >= 0, got {proximal_mu}")
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[protocol.PROXIMAL_MU] = self.proximal_mu
        return super().configure_train(server_round, arrays, config, grid)
