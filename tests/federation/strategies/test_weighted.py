"""Plaintext FedAvg and FedProx weight training replies by the site's aggregation weight."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from countyfl import protocol
from countyfl.federation.strategies.weighted import WeightedFedAvg, WeightedFedProx
from tests.federation.strategies.test_recording import _instruction


def _reply(node: int, weights: float, examples: int, weight: int, accuracy: float) -> Message:
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: examples,
            protocol.AGGREGATION_WEIGHT: weight,
            protocol.PARTITION_ID: node,
            protocol.ACCURACY: accuracy,
        }
    )
    arrays = ArrayRecord([np.full((2,), weights, dtype=np.float32)])
    content = RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: metrics})
    return Message(content, reply_to=_instruction(node, MessageType.TRAIN))


def _evaluate_reply(node: int, examples: int, accuracy: float) -> Message:
    metrics = MetricRecord(
        {protocol.NUM_EXAMPLES: examples, protocol.PARTITION_ID: node, protocol.ACCURACY: accuracy}
    )
    return Message(
        RecordDict({protocol.METRICS: metrics}), reply_to=_instruction(node, MessageType.EVALUATE)
    )


@pytest.mark.parametrize("strategy", [WeightedFedAvg(), WeightedFedProx(proximal_mu=0.1)])
def test_training_counts_by_weight_and_evaluation_by_test_rows(strategy: WeightedFedAvg) -> None:
    # The same number of rows, weights 3 and 1: the average is 3/4 of the way to the first.
    replies = [_reply(1, 1.0, 100, 3, 0.9), _reply(2, 0.0, 100, 1, 0.5)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], [0.75, 0.75])
    assert metrics[protocol.ACCURACY] == pytest.approx(0.8)
    # Evaluation: by the test rows each site reports (it sends no aggregation weight).
    evaluated = strategy.aggregate_evaluate(
        1, [_evaluate_reply(1, 30, 1.0), _evaluate_reply(2, 10, 0.0)]
    )
    assert evaluated is not None and evaluated[protocol.ACCURACY] == pytest.approx(0.75)
    assert strategy.weighted_by_key == protocol.NUM_EXAMPLES
