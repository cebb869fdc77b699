"""Encrypted FedAvg on hand-built replies: the oracle, and every rejected reply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from test_strategies import _error_reply, _instruction

from countyfl import keys
from countyfl.aggregator.encrypted import (
    CHUNK_PREFIX,
    EncryptedFedAvg,
    arrays_to_update,
    update_to_arrays,
)
from countyfl.privacy.he.codec import decrypt_average, encrypt_update
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    KeyMaterialError,
    init_keys,
    load_secret_context,
)

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
    metrics = MetricRecord({keys.NUM_EXAMPLES: examples, keys.PARTITION_ID: partition})
    content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
    return Message(content, reply_to=_instruction(node, MessageType.TRAIN))


def _strategy(key_dir: Path) -> EncryptedFedAvg:
    return EncryptedFedAvg(public_context_path=key_dir / PUBLIC_CONTEXT_FILE, num_values=NUM_VALUES)


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

    strategy = _strategy(key_dir)
    arrays, metrics = strategy.aggregate_train(
        1, [*good, foreign, too_long, truncated, plaintext, refused, garbage]
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
    ):
        assert f"node {node}:" in failures and reason in failures, failures


def test_a_round_with_no_valid_reply_aggregates_nothing(key_dir: Path) -> None:
    strategy = _strategy(key_dir)
    refused = _error_reply(5, MessageType.TRAIN, "refused")
    assert strategy.aggregate_train(1, [refused]) == (None, None)
