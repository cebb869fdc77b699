"""The recording wrapper around Flower's FedAvg and FedProx, called on hand-built replies."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    DEFAULT_TTL,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import strategy as flower

from countyfl import protocol
from countyfl.federation.strategies.recording import RecordingStrategy, RoundCallback
from countyfl.runs import FederationHistory

SHAPES = [(3, 2), (2,)]


def FedAvg(*, on_round_end: RoundCallback | None = None, **kwargs: Any) -> RecordingStrategy:
    """Flower's FedAvg, wrapped to record every reply (as the ServerApp composes it)."""
    return RecordingStrategy(flower.FedAvg(**kwargs), on_round_end=on_round_end)


def FedProx(*, on_round_end: RoundCallback | None = None, **kwargs: Any) -> RecordingStrategy:
    """Flower's FedProx, wrapped to record every reply."""
    return RecordingStrategy(flower.FedProx(**kwargs), on_round_end=on_round_end)


def _instruction(node_id: int, message_type: str, server_round: int = 1) -> Message:
    """An instruction as the SuperLink would deliver it to ``node_id`` (no TaskIdentity)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"instruction-{node_id}",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=message_type,
    )
    content = RecordDict({protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: server_round})})
    return Message(content=content, metadata=metadata)


def _arrays(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def _train_reply(
    node_id: int, partition_id: int, num_examples: int, arrays: Sequence[np.ndarray], loss: float
) -> Message:
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: num_examples,
            protocol.AGGREGATION_WEIGHT: num_examples,
            protocol.PARTITION_ID: partition_id,
            protocol.EPSILON: loss,
        }
    )
    content = RecordDict({protocol.ARRAYS: ArrayRecord(list(arrays)), protocol.METRICS: metrics})
    return Message(content, reply_to=_instruction(node_id, MessageType.TRAIN))


def _evaluate_reply(node_id: int, partition_id: int, num_examples: int, accuracy: float) -> Message:
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: num_examples,
            protocol.PARTITION_ID: partition_id,
            protocol.ACCURACY: accuracy,
            protocol.LOSS: 1.0 - accuracy,
        }
    )
    return Message(
        RecordDict({protocol.METRICS: metrics}),
        reply_to=_instruction(node_id, MessageType.EVALUATE),
    )


def _error_reply(node_id: int, message_type: str, reason: str) -> Message:
    return Message(Error(code=1, reason=reason), reply_to=_instruction(node_id, message_type))


def _weighted_average(arrays: list[list[np.ndarray]], weights: list[int]) -> list[np.ndarray]:
    w = np.array(weights, dtype=np.float64)
    return [
        np.tensordot(w / w.sum(), np.stack([a[layer] for a in arrays]).astype(np.float64), axes=1)
        for layer in range(len(SHAPES))
    ]


@pytest.fixture(
    params=[FedAvg, lambda **kw: FedProx(proximal_mu=0.1, **kw)], ids=["fedavg", "fedprox"]
)
def make_strategy(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.param


def test_reply_helper_sets_the_node_as_source() -> None:
    reply = _train_reply(17, 0, 1, _arrays(np.random.default_rng(0)), 0.1)
    assert reply.metadata.src_node_id == 17
    assert reply.metadata.message_type == MessageType.TRAIN


@pytest.mark.parametrize("seed", range(5))
def test_aggregate_train_is_the_example_weighted_average(make_strategy, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 6))
    arrays = [_arrays(rng) for _ in range(count)]
    examples = [int(n) for n in rng.integers(1, 500, size=count)]
    losses = [float(v) for v in rng.random(count)]
    replies = [_train_reply(100 + i, i, examples[i], arrays[i], losses[i]) for i in range(count)]
    strategy = make_strategy()
    aggregated, metrics = strategy.aggregate_train(1, replies)

    assert aggregated is not None and metrics is not None
    expected = _weighted_average(arrays, examples)
    for got, want in zip(aggregated.to_numpy_ndarrays(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert metrics[protocol.EPSILON] == pytest.approx(np.average(losses, weights=examples))

    record = strategy.history.rounds[1]
    assert record.failures == []
    assert set(record.train) == set(range(count))
    for i in range(count):
        assert record.train[i][protocol.NUM_EXAMPLES] == examples[i]
        assert record.train[i][protocol.EPSILON] == pytest.approx(losses[i])
        assert protocol.PARTITION_ID not in record.train[i]


def test_unequal_weights_matter() -> None:
    ones = [np.ones(s, dtype=np.float32) for s in SHAPES]
    zeros = [np.zeros(s, dtype=np.float32) for s in SHAPES]
    replies = [_train_reply(1, 0, 3, ones, 0.0), _train_reply(2, 1, 1, zeros, 0.0)]
    aggregated, _ = FedAvg().aggregate_train(1, replies)
    assert aggregated is not None
    for layer in aggregated.to_numpy_ndarrays():
        np.testing.assert_allclose(layer, 0.75)


def test_error_reply_is_a_failure_and_the_rest_aggregate(make_strategy) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    good = [_arrays(rng) for _ in range(2)]
    replies = [
        _train_reply(11, 0, 40, good[0], 0.3),
        _error_reply(12, MessageType.TRAIN, "site went offline"),
        _train_reply(13, 2, 10, good[1], 0.5),
    ]
    strategy = make_strategy()
    aggregated, _ = strategy.aggregate_train(4, replies)
    assert aggregated is not None
    for got, want in zip(
        aggregated.to_numpy_ndarrays(), _weighted_average(good, [40, 10]), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    record = strategy.history.rounds[4]
    assert set(record.train) == {0, 2}
    assert len(record.failures) == 1
    failure = record.failures[0]
    assert "train" in failure and "12" in failure and "site went offline" in failure


def test_only_errors_aggregate_to_nothing() -> None:
    strategy = FedAvg()
    aggregated, metrics = strategy.aggregate_train(
        1, [_error_reply(5, MessageType.TRAIN, "a"), _error_reply(6, MessageType.TRAIN, "b")]
    )
    assert aggregated is None and metrics is None
    assert len(strategy.history.rounds[1].failures) == 2


def test_reply_without_metrics_is_rejected_and_the_round_goes_on() -> None:
    rng = np.random.default_rng(3)
    good = [_arrays(rng) for _ in range(2)]
    bad_content = RecordDict({protocol.ARRAYS: ArrayRecord(_arrays(rng))})
    bad = Message(bad_content, reply_to=_instruction(21, MessageType.TRAIN))
    replies = [_train_reply(20, 0, 5, good[0], 0.1), bad, _train_reply(22, 2, 15, good[1], 0.2)]
    strategy = FedAvg()
    aggregated, _ = strategy.aggregate_train(2, replies)
    assert aggregated is not None
    for got, want in zip(
        aggregated.to_numpy_ndarrays(), _weighted_average(good, [5, 15]), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    record = strategy.history.rounds[2]
    assert set(record.train) == {0, 2}
    assert len(record.failures) == 1 and "21" in record.failures[0]


def test_reply_without_partition_id_is_rejected_and_the_round_goes_on() -> None:
    rng = np.random.default_rng(4)
    good = _arrays(rng)
    metrics = MetricRecord({protocol.NUM_EXAMPLES: 9, protocol.EPSILON: 0.4})
    content = RecordDict({protocol.ARRAYS: ArrayRecord(_arrays(rng)), protocol.METRICS: metrics})
    bad = Message(content, reply_to=_instruction(31, MessageType.TRAIN))
    strategy = FedAvg()
    aggregated, _ = strategy.aggregate_train(1, [_train_reply(30, 0, 5, good, 0.1), bad])
    assert aggregated is not None
    for got, want in zip(aggregated.to_numpy_ndarrays(), good, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert list(strategy.history.rounds[1].train) == [0]
    assert "31" in strategy.history.rounds[1].failures[0]


def test_train_reply_without_arrays_is_rejected_and_the_round_goes_on() -> None:
    rng = np.random.default_rng(5)
    good = _arrays(rng)
    metrics = MetricRecord(
        {protocol.NUM_EXAMPLES: 9, protocol.PARTITION_ID: 1, protocol.EPSILON: 0.4}
    )
    bad = Message(
        RecordDict({protocol.METRICS: metrics}), reply_to=_instruction(41, MessageType.TRAIN)
    )
    strategy = FedAvg()
    aggregated, _ = strategy.aggregate_train(1, [_train_reply(40, 0, 5, good, 0.1), bad])
    assert aggregated is not None
    for got, want in zip(aggregated.to_numpy_ndarrays(), good, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    record = strategy.history.rounds[1]
    assert list(record.train) == [0]
    assert len(record.failures) == 1 and "41" in record.failures[0]


def test_aggregate_evaluate_records_metrics_and_calls_back(make_strategy) -> None:  # type: ignore[no-untyped-def]
    ended: list[int] = []
    strategy = make_strategy(on_round_end=ended.append)
    replies = [
        _evaluate_reply(1, 0, 30, 0.9),
        _evaluate_reply(2, 1, 10, 0.5),
        _error_reply(3, MessageType.EVALUATE, "out of memory"),
    ]
    metrics = strategy.aggregate_evaluate(3, replies)
    assert ended == [3]
    assert metrics is not None
    assert metrics[protocol.ACCURACY] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    record = strategy.history.rounds[3]
    assert record.evaluate[0][protocol.ACCURACY] == pytest.approx(0.9)
    assert record.evaluate[1][protocol.NUM_EXAMPLES] == 10
    assert record.train == {}
    assert len(record.failures) == 1 and "evaluate" in record.failures[0]


def test_on_round_end_is_called_even_when_every_node_failed() -> None:
    ended: list[int] = []
    strategy = FedAvg(on_round_end=ended.append)
    assert strategy.aggregate_evaluate(2, [_error_reply(1, MessageType.EVALUATE, "x")]) is None
    assert ended == [2]


def test_aggregate_train_does_not_call_back() -> None:
    ended: list[int] = []
    strategy = FedAvg(on_round_end=ended.append)
    strategy.aggregate_train(1, [_train_reply(1, 0, 1, _arrays(np.random.default_rng(0)), 0.0)])
    assert ended == []


def test_rounds_are_kept_apart_and_history_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    strategy = FedAvg()
    rng = np.random.default_rng(1)
    for server_round in (1, 2):
        strategy.aggregate_train(
            server_round, [_train_reply(1, 0, 3, _arrays(rng), 0.1 * server_round)]
        )
        strategy.aggregate_evaluate(
            server_round, [_evaluate_reply(1, 0, 3, 0.5 + 0.1 * server_round)]
        )
    history = strategy.history
    assert sorted(history.rounds) == [1, 2]
    assert history.rounds[2].train[0][protocol.EPSILON] == pytest.approx(0.2)
    path = tmp_path / "history.json"
    history.write(path)
    again = FederationHistory.read(path)
    assert again.to_dict() == history.to_dict()
    assert again.rounds[1].evaluate[0][protocol.ACCURACY] == pytest.approx(0.6)


def test_fedprox_sends_proximal_mu_and_both_keep_their_own_history() -> None:
    prox = FedProx(proximal_mu=0.25)
    assert prox.strategy.proximal_mu == 0.25  # type: ignore[attr-defined]
    avg = FedAvg()
    prox.aggregate_train(1, [_train_reply(1, 0, 3, _arrays(np.random.default_rng(0)), 0.1)])
    assert 1 in prox.history.rounds
    assert avg.history.rounds == {}


def test_evaluate_reply_without_metrics_is_rejected_and_the_round_ends() -> None:
    ended: list[int] = []
    strategy = FedAvg(on_round_end=ended.append)
    bad = Message(RecordDict({}), reply_to=_instruction(9, MessageType.EVALUATE))
    metrics = strategy.aggregate_evaluate(1, [_evaluate_reply(8, 0, 4, 0.75), bad])
    assert metrics is not None and metrics[protocol.ACCURACY] == pytest.approx(0.75)
    assert list(strategy.history.rounds[1].evaluate) == [0]
    assert len(strategy.history.rounds[1].failures) == 1
    assert "9" in strategy.history.rounds[1].failures[0]
    assert ended == [1]


def test_a_node_that_never_replies_is_recorded_as_lost(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # What configure_train sent (Flower's own sampling needs a live run to build messages).
    sent = [_instruction(node, MessageType.TRAIN) for node in (1, 2, 3)]
    monkeypatch.setattr(
        "flwr.serverapp.strategy.FedAvg.configure_train", lambda *args, **kwargs: sent
    )
    strategy = FedAvg()
    assert list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid=None)) == sent
    ones = [np.ones(s, dtype=np.float32) for s in SHAPES]
    aggregated, _ = strategy.aggregate_train(
        1, [_train_reply(1, 0, 3, ones, 0.0), _error_reply(2, MessageType.TRAIN, "refused")]
    )
    assert aggregated is not None
    failures = strategy.history.rounds[1].failures
    assert failures == [
        "train: node 3: no reply (node lost or timed out)",
        "train: node 2: refused",
    ], failures
