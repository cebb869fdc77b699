"""Encrypted FedAvg on hand-built replies: the oracle, and every rejected reply."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import tenseal as ts
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from hypothesis import given, settings
from test_recording import _error_reply, _instruction

from countyfl import protocol
from countyfl.federation.strategies import encrypted
from countyfl.federation.strategies.encrypted import EncryptedFedAvg, EncryptedFedProx
from countyfl.federation.strategies.recording import RecordingStrategy, record_rejection
from countyfl.privacy.he.codec import EncryptedUpdate, decrypt_average, encrypt_update
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    KeyMaterialError,
    fingerprint,
    init_keys,
    load_secret_context,
)
from countyfl.privacy.he.wire import (
    CHUNK_PREFIX,
    MAX_CHUNK_BYTES,
    META_KEY,
    arrays_to_update,
    update_to_arrays,
)
from countyfl.runs import FederationHistory

SHAPES = [(1, 13), (1,)]
NUM_VALUES = 14


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    init_keys(folder)
    return folder


@pytest.fixture(scope="module")
def secret(key_dir: Path) -> Any:
    return load_secret_context(key_dir / SECRET_CONTEXT_FILE)


def _reply(node: int, partition: int, arrays: ArrayRecord, examples: int) -> Message:
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: examples,
            protocol.AGGREGATION_WEIGHT: examples,
            protocol.PARTITION_ID: partition,
        }
    )
    content = RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: metrics})
    return Message(content, reply_to=_instruction(node, MessageType.TRAIN))


def _strategy(key_dir: Path, num_values: int = NUM_VALUES) -> RecordingStrategy:
    """Encrypted FedAvg as the ServerApp composes it: rejections go to the history."""
    history = FederationHistory()
    inner = EncryptedFedAvg(
        public_context_path=key_dir / PUBLIC_CONTEXT_FILE,
        num_values=num_values,
        on_reject=partial(record_rejection, history),
    )
    return RecordingStrategy(inner, history)


def test_the_strategy_refuses_to_start_with_a_secret_context(key_dir: Path) -> None:
    with pytest.raises(KeyMaterialError, match="SECRET"):
        EncryptedFedAvg(public_context_path=key_dir / SECRET_CONTEXT_FILE, num_values=14)


def test_bad_replies_are_rejected_recorded_and_the_round_goes_on(
    key_dir: Path, secret: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    weights = [[rng.normal(size=s) for s in SHAPES] for _ in range(3)]
    counts = [200, 171, 30]
    good = [
        _reply(
            10 + i, i, update_to_arrays(encrypt_update(weights[i], counts[i], secret)), counts[i]
        )
        for i in range(3)
    ]
    init_keys(tmp_path / "other")
    other = load_secret_context(tmp_path / "other" / SECRET_CONTEXT_FILE)
    foreign = _reply(20, 3, update_to_arrays(encrypt_update(weights[0], 5, other)), 5)
    too_long = _reply(
        21, 4, update_to_arrays(encrypt_update([np.ones(NUM_VALUES + 1)], 5, secret)), 5
    )
    truncated_record = update_to_arrays(encrypt_update(weights[0], 5, secret))
    truncated_record.pop(f"{CHUNK_PREFIX}0000")
    truncated = _reply(22, 5, truncated_record, 5)
    plaintext = _reply(23, 6, ArrayRecord([np.ones((1, 13)), np.ones(1)]), 5)
    garbage_record = update_to_arrays(encrypt_update(weights[0], 5, secret))
    garbage_record[f"{CHUNK_PREFIX}0000"] = Array(np.frombuffer(b"\x00" * 4000, dtype=np.uint8))
    garbage = _reply(25, 7, garbage_record, 5)
    refused = _error_reply(24, MessageType.TRAIN, "institution x refuses round 1")
    # One value per slot (what TenSEAL's CKKSVector sends): added to the others, garbage.
    old_record = update_to_arrays(encrypt_update(weights[0], 5, secret))
    old_record[META_KEY] = Array(
        np.frombuffer(
            json.dumps(
                {
                    "fingerprint": fingerprint(secret),
                    "num-values": NUM_VALUES,
                    "num-examples": 5,
                    "chunks": 1,
                }
            ).encode(),
            dtype=np.uint8,
        )
    )
    one_per_slot = _reply(26, 8, old_record, 5)

    strategy = _strategy(key_dir)
    arrays, metrics = strategy.aggregate_train(
        1, [*good, foreign, too_long, truncated, plaintext, refused, garbage, one_per_slot]
    )
    assert arrays is not None and metrics is not None
    result = decrypt_average(arrays_to_update(arrays), secret, SHAPES)
    for layer, shape in enumerate(SHAPES):
        expected = sum(c * w[layer] for c, w in zip(counts, weights, strict=True)) / sum(counts)
        np.testing.assert_allclose(result[layer].reshape(shape), expected, atol=1e-6)
    record = strategy.history.rounds[1]
    assert sorted(record.train) == [0, 1, 2]
    failures = " | ".join(record.failures)
    for node, reason in (
        (20, "another key"),
        (21, "values"),
        (22, "malformed"),
        (23, "no encrypted update"),
        (24, "refuses"),
        (25, "not a CKKS vector"),
        (26, "packed 'real'"),
    ):
        assert f"node {node}:" in failures and reason in failures, failures


def test_a_round_with_no_valid_reply_aggregates_nothing(key_dir: Path) -> None:
    strategy = _strategy(key_dir)
    refused = _error_reply(5, MessageType.TRAIN, "refused")
    assert strategy.aggregate_train(1, [refused]) == (None, None)


def test_oversized_replies_are_refused_before_anything_is_deserialised(
    key_dir: Path, secret: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = encrypted.deserialize

    def counting(context: Any, update: Any) -> Any:
        calls.append(update.num_examples)
        return real(context, update)

    monkeypatch.setattr(encrypted, "deserialize", counting)
    weights = [np.ones(s) for s in SHAPES]
    good = _reply(10, 0, update_to_arrays(encrypt_update(weights, 7, secret)), 7)
    big_chunk = update_to_arrays(encrypt_update(weights, 5, secret))
    big_chunk[f"{CHUNK_PREFIX}0000"] = Array(np.zeros(MAX_CHUNK_BYTES + 1, dtype=np.uint8))
    big_meta = update_to_arrays(encrypt_update(weights, 6, secret))
    big_meta[META_KEY] = Array(np.frombuffer(b" " * 100_000, dtype=np.uint8))

    strategy = _strategy(key_dir)
    arrays, _ = strategy.aggregate_train(
        1, [good, _reply(30, 1, big_chunk, 5), _reply(31, 2, big_meta, 6)]
    )
    assert arrays is not None
    assert calls == [7], "only the good reply may reach TenSEAL"
    failures = " | ".join(strategy.history.rounds[1].failures)
    assert "node 30: rejected: oversized" in failures, failures
    assert "node 31: rejected: oversized: metadata" in failures, failures
    result = decrypt_average(arrays_to_update(arrays), secret, SHAPES)
    np.testing.assert_allclose(result[0].reshape(SHAPES[0]), weights[0], atol=1e-6)


def test_encrypted_fedprox_sends_mu_and_aggregates_like_fedavg(
    key_dir: Path, secret: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.app import ConfigRecord

    # Building real messages needs a Flower run; what matters is the config handed on.
    handed_on: list[ConfigRecord] = []
    monkeypatch.setattr(
        EncryptedFedAvg,
        "configure_train",
        lambda self, server_round, arrays, config, grid: handed_on.append(config) or [],
    )
    strategy = EncryptedFedProx(
        proximal_mu=0.01, public_context_path=key_dir / PUBLIC_CONTEXT_FILE, num_values=NUM_VALUES
    )
    strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid=None)  # type: ignore[arg-type]
    assert handed_on and handed_on[0][protocol.PROXIMAL_MU] == pytest.approx(0.01)
    rng = np.random.default_rng(1)
    weights = [[rng.normal(size=s) for s in SHAPES] for _ in range(2)]
    replies = [
        _reply(10 + i, i, update_to_arrays(encrypt_update(weights[i], n, secret)), n)
        for i, n in enumerate((30, 90))
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    result = decrypt_average(arrays_to_update(arrays), secret, SHAPES)
    expected = (30 * weights[0][0] + 90 * weights[1][0]) / 120
    np.testing.assert_allclose(result[0].reshape(SHAPES[0]), expected, atol=1e-6)
    with pytest.raises(ValueError, match="proximal-mu"):
        EncryptedFedProx(
            proximal_mu=-1, public_context_path=key_dir / PUBLIC_CONTEXT_FILE, num_values=14
        )


@settings(max_examples=40, deadline=None)
@given(chunks=st.lists(st.binary(max_size=3000), min_size=1, max_size=4))
def test_updates_travel_as_the_byte_arrays_numpy_would_make(chunks: list[bytes]) -> None:
    update = EncryptedUpdate(tuple(chunks), 7, 3, "f" * 64)
    record = update_to_arrays(update)
    for index, chunk in enumerate(chunks):
        sent = record[f"{CHUNK_PREFIX}{index:04d}"]
        numpy_made = Array(np.frombuffer(chunk, dtype=np.uint8))
        assert (sent.dtype, sent.shape, sent.stype, sent.data) == (
            numpy_made.dtype,
            numpy_made.shape,
            numpy_made.stype,
            numpy_made.data,
        )
        assert sent.numpy().tobytes() == chunk
    assert arrays_to_update(record) == update
    # As publishing reads a saved aggregate back: Arrays rebuilt from numpy arrays.
    rebuilt = ArrayRecord({name: Array(array.numpy()) for name, array in record.items()})
    assert arrays_to_update(rebuilt) == update


def test_arrays_that_are_not_plain_byte_vectors_are_read_as_numpy_reads_them(
    secret: Any,
) -> None:
    update = encrypt_update([np.ones(s) for s in SHAPES], 4, secret)
    record = update_to_arrays(update)
    chunk = record[f"{CHUNK_PREFIX}0000"]
    # Metadata that misstates the length: the bytes are the ones the .npy header describes.
    record[f"{CHUNK_PREFIX}0000"] = Array(
        dtype="uint8", shape=(len(update.chunks[0]) - 1,), stype=chunk.stype, data=chunk.data
    )
    assert arrays_to_update(record) == update
    # The same bytes as a 2-D array, or as 16-bit values, are read through numpy too.
    as_matrix = np.frombuffer(update.chunks[0], dtype=np.uint8).reshape(1, -1)
    record[f"{CHUNK_PREFIX}0000"] = Array(as_matrix)
    assert arrays_to_update(record) == update
    meta = record[META_KEY].numpy().tobytes()
    meta += b" " * (len(meta) % 2)  # JSON allows trailing blanks; int16 needs an even length
    record[META_KEY] = Array(np.frombuffer(meta, dtype=np.int16))
    assert arrays_to_update(record) == update


def _with_meta(record: ArrayRecord, **changes: Any) -> ArrayRecord:
    meta = json.loads(record[META_KEY].numpy().tobytes())
    record[META_KEY] = Array(np.frombuffer(json.dumps({**meta, **changes}).encode(), np.uint8))
    return record


def test_replies_that_would_break_the_sum_are_rejected_before_it(
    key_dir: Path, secret: Any
) -> None:
    # 5,000 values: one ciphertext two to a slot, two if one to a slot.
    size = 5000
    strategy = _strategy(key_dir, num_values=size)
    rng = np.random.default_rng(4)
    weights = [[rng.normal(size=size)] for _ in range(2)]
    good = [
        _reply(10 + i, i, update_to_arrays(encrypt_update(weights[i], 3 + i, secret)), 3 + i)
        for i in range(2)
    ]
    # A chunk TenSEAL accepts but that is a vector of 2 values: added, it fails the round.
    short = update_to_arrays(encrypt_update(weights[0], 3, secret))
    short[f"{CHUNK_PREFIX}0000"] = Array(
        np.frombuffer(ts.ckks_vector(secret, [1.0, 2.0]).serialize(), np.uint8)
    )
    # A chunk at another scale.
    scaled = update_to_arrays(encrypt_update(weights[0], 3, secret))
    other_scale = ts.context_from(secret.serialize(save_secret_key=True))
    other_scale.global_scale = 2.0**30
    scaled[f"{CHUNK_PREFIX}0000"] = Array(
        np.frombuffer(ts.ckks_vector(other_scale, np.ones(4096).tolist()).serialize(), np.uint8)
    )
    # Two chunks, as one value per slot would need.
    doubled = update_to_arrays(encrypt_update(weights[0], 3, secret))
    doubled[f"{CHUNK_PREFIX}0001"] = doubled[f"{CHUNK_PREFIX}0000"]
    doubled = _with_meta(doubled, chunks=2)
    # JSON's Infinity as a count: int() raises OverflowError, not ValueError.
    infinite = _with_meta(
        update_to_arrays(encrypt_update(weights[0], 3, secret)), **{"num-values": float("inf")}
    )
    bad = [
        _reply(20, 5, short, 3),
        _reply(21, 6, scaled, 3),
        _reply(22, 7, doubled, 3),
        _reply(23, 8, infinite, 3),
    ]
    arrays, _ = strategy.aggregate_train(1, [*good, *bad])
    assert arrays is not None
    result = decrypt_average(arrays_to_update(arrays), secret, [(size,)])
    expected = (3 * weights[0][0] + 4 * weights[1][0]) / 7
    np.testing.assert_allclose(result[0], expected, atol=1e-6)
    failures = " | ".join(strategy.history.rounds[1].failures)
    for node, reason in (
        (20, "not one ciphertext of 4096 slots"),
        (21, "scale and level"),
        (22, "2 chunks, expected 1"),
        (23, "malformed"),
    ):
        assert f"node {node}:" in failures and reason in failures, failures
