"""Encrypted FedAvg: the county node adds CKKS ciphertexts it cannot read.

Each institution replies with Enc(n_i w_i) (see :mod:`countyfl.privacy.he.codec`); the
strategy checks every reply (key fingerprint, number of values and chunks, chunk sizes,
bytes that deserialise), drops and records those that fail, adds the rest with the
PUBLIC context and sends Enc(sum n_i w_i) with sum n_i to the next round. It never holds
the secret key: it loads its context with ``load_public_context``, which refuses a
context that has one. FedAvg: McMahan et al., AISTATS 2017; CKKS: Cheon et al., 2017.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from countyfl import protocol
from countyfl.aggregator.history import FederationHistory
from countyfl.aggregator.strategies import RecordingMixin, RoundCallback
from countyfl.privacy.he.codec import (
    PACKING_COMPLEX,
    PACKING_REAL,
    CodecError,
    EncryptedUpdate,
    add_deserialized,
    check_packed,
    deserialize,
    expected_chunks,
    slot_count,
)
from countyfl.privacy.he.keys import fingerprint, load_public_context

META_KEY = "ckks-meta"
CHUNK_PREFIX = "ckks-chunk-"
# A serialised chunk (8,192 values, two to a slot) is about 127 KB; far larger is not ours.
MAX_CHUNK_BYTES = 512 * 1024
# The metadata is a few dozen bytes of JSON; it is parsed only when it is small.
MAX_META_BYTES = 4096


def update_to_arrays(update: EncryptedUpdate) -> ArrayRecord:
    """An encrypted update as an ArrayRecord (chunked by Flower in transport)."""
    meta = {
        "fingerprint": update.key_fingerprint,
        "num-values": update.num_values,
        "num-examples": update.num_examples,
        "chunks": len(update.chunks),
        "packing": update.packing,
    }
    record = {META_KEY: _uint8_array(json.dumps(meta).encode())}
    for index, chunk in enumerate(update.chunks):
        record[f"{CHUNK_PREFIX}{index:04d}"] = _uint8_array(chunk)
    return ArrayRecord(record)


def is_encrypted(arrays: ArrayRecord) -> bool:
    """Whether an ArrayRecord carries an encrypted update rather than plaintext weights."""
    return META_KEY in arrays


def arrays_to_update(arrays: ArrayRecord) -> EncryptedUpdate:
    """Parse and check the shape of an encrypted update; CodecError says what is wrong."""
    if META_KEY not in arrays:
        raise CodecError("the reply carries no encrypted update (no ckks-meta)")
    # Sizes are checked on the Array headers before any byte is parsed or deserialised.
    meta_size = _byte_size(arrays[META_KEY])
    if meta_size > MAX_META_BYTES:
        raise CodecError(f"oversized: metadata of {meta_size} bytes (at most {MAX_META_BYTES})")
    for name, array in arrays.items():
        if name != META_KEY and _byte_size(array) > MAX_CHUNK_BYTES:
            raise CodecError(
                f"oversized: {name} holds {_byte_size(array)} bytes "
                f"(a chunk is at most {MAX_CHUNK_BYTES})"
            )
    try:
        meta = json.loads(_uint8_payload(arrays[META_KEY]))
        declared = int(meta["chunks"])
        update = EncryptedUpdate(
            chunks=tuple(_uint8_payload(arrays[f"{CHUNK_PREFIX}{i:04d}"]) for i in range(declared)),
            num_values=int(meta["num-values"]),
            num_examples=int(meta["num-examples"]),
            key_fingerprint=str(meta["fingerprint"]),
            # Written before values were packed two to a slot: one per slot.
            packing=str(meta.get("packing", PACKING_REAL)),
        )
    except (KeyError, ValueError, TypeError, OverflowError) as error:
        raise CodecError(f"malformed encrypted update: {error}") from None
    if len(arrays) != declared + 1:
        raise CodecError(f"{len(arrays) - 1} chunks sent, {declared} declared")
    return update


def _byte_size(array: Array) -> int:
    return len(array.data)


def _npy_header(length: int) -> bytes:
    """The .npy header ``np.save`` writes for a uint8 vector of ``length`` values."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (length,)}
    )
    return header.getvalue()


def _uint8_array(data: bytes) -> Array:
    """``Array(np.frombuffer(data, dtype=np.uint8))``, the same bytes, without np.save."""
    return Array(
        dtype="uint8", shape=(len(data),), stype="numpy.ndarray", data=_npy_header(len(data)) + data
    )


def _uint8_payload(array: Array) -> bytes:
    """The bytes a 1-D uint8 Array holds, as ``array.numpy().tobytes()`` gives them.

    ``np.load`` reads the .npy header with ``ast.literal_eval``: about 0.3 ms per Array,
    0.3 s for the four 246-Array replies of a 1-million-parameter round. When the data is
    exactly the header ``np.save`` writes for a uint8 vector of the declared length followed
    by that many bytes, the bytes are sliced off; anything else goes through ``np.load``.
    """
    if array.stype == "numpy.ndarray" and array.dtype == "uint8" and len(array.shape) == 1:
        length = array.shape[0]
        prefix = _npy_header(length)
        if len(array.data) == len(prefix) + length and array.data.startswith(prefix):
            return array.data[len(prefix) :]
    return array.numpy().tobytes()


class EncryptedFedAvg(RecordingMixin, FlowerFedAvg):
    """FedAvg over CKKS ciphertexts with the public context only."""

    def __init__(
        self,
        *,
        public_context_path: Path,
        num_values: int,
        on_round_end: RoundCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.history = FederationHistory()
        self.on_round_end = on_round_end
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
        accepted = self._record(server_round, list(replies), "train")
        record = self.history.round(server_round)
        vectors, counts, contents = [], [], []
        for message in accepted:
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
                # Rejected, recorded with the node, and the round goes on without it.
                record.failures.append(
                    f"train: node {message.metadata.src_node_id}: rejected: {error}"
                )
                metrics = message.content.get(protocol.METRICS)
                if isinstance(metrics, MetricRecord) and protocol.PARTITION_ID in metrics:
                    record.train.pop(int(metrics[protocol.PARTITION_ID]), None)  # type: ignore[arg-type]
                continue
            counts.append(update.num_examples)
            contents.append(message.content)
        if not vectors:
            return None, None
        total = add_deserialized(
            vectors, self.num_values, sum(counts), self.fingerprint, PACKING_COMPLEX
        )
        return update_to_arrays(total), self.train_metrics_aggr_fn(contents, self.weighted_by_key)


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
