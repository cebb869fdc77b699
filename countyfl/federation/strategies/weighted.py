"""Flower's FedAvg and FedProx, training replies weighted by each site's aggregation weight.

A site sends ``aggregation-weight`` with its update (its noisy count, or its noise-aware
weight: :mod:`countyfl.privacy.weighting`); Flower weights both phases by one key, so
these weight training by that key and evaluation, as before, by the test rows.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedProx

from countyfl import protocol


class _TrainWeight(FedAvg):
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        key = self.weighted_by_key
        self.weighted_by_key = protocol.AGGREGATION_WEIGHT
        try:
            return super().aggregate_train(server_round, replies)
        finally:
            self.weighted_by_key = key


class WeightedFedAvg(_TrainWeight):
    """FedAvg (McMahan et al., AISTATS 2017) with each update weighted by its site's weight."""


class WeightedFedProx(_TrainWeight, FedProx):
    """FedProx (Li et al., MLSys 2020) with each update weighted by its site's weight."""
