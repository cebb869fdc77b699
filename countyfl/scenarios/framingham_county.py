"""Framingham county: 10-year coronary risk over a synthetic county of 13 institutions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from countyfl import protocol
from countyfl.data import framingham as data
from countyfl.scenarios import Scenario, register

if TYPE_CHECKING:
    from countyfl.data.federated import FederatedDataset


def _load(path: Path | None, partition_seed: int) -> FederatedDataset:
    return data.load(path, partition_seed=partition_seed)


SCENARIO = register(
    Scenario(
        name="framingham-county",
        description=(
            "Framingham 10-year coronary risk over a synthetic county: 1 county hospital, "
            "4 township health centres, 8 village clinics"
        ),
        data_schema="framingham",
        feature_names=data.FEATURE_NAMES,
        num_institutions=len(data.CountyLayout().institutions()),
        loader=_load,
        reference_scale={
            name: data.REFERENCE_SCALE[field]
            for name, field in zip(data.FEATURE_NAMES, data.FEATURES, strict=True)
        },
        defaults={
            "model": "risk-logreg",
            "num-server-rounds": 15,
            "local-steps": 20,
            "batch-size": 32,
            "learning-rate": 0.05,
            "optimizer": "sgd",
            "momentum": 0.9,
        },
        default_seeds=(42, 43, 44),
        registry_name="coronary-risk-10y",
        headline_metric=protocol.AUC,
    )
)
