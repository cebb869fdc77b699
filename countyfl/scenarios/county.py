"""County: 10-year coronary risk over a whole synthetic county (1 + 15 + 240 institutions).

The population is drawn from a Gaussian copula fitted to Framingham
(:mod:`countyfl.data.synthetic_county`): one county hospital of thousands, 15 township
health centres of hundreds and 240 village clinics of tens, older and sicker at higher
levels, each institution in a township. ``county-16``, ``county-64`` and ``county-1024``
are the same county at other sizes (1 + t + t (t + 1) institutions for t townships with
t + 1 villages each), for scale measurements.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from countyfl import protocol
from countyfl.data import framingham
from countyfl.data import synthetic_county as data
from countyfl.scenarios import Scenario, register

if TYPE_CHECKING:
    from countyfl.data.federated import FederatedDataset

# name -> (townships, villages per township)
SIZES: dict[str, tuple[int, int]] = {
    "county": (15, 16),
    "county-16": (3, 4),
    "county-64": (7, 8),
    "county-1024": (31, 32),
}


def _load(name: str, path: Path | None, partition_seed: int) -> FederatedDataset:
    townships, villages = SIZES[name]
    shape = data.CountyShape(townships=townships, villages_per_township=villages)
    return data.load(path, partition_seed=partition_seed, shape=shape, name=name)


def _scenario(name: str) -> Scenario:
    townships, villages = SIZES[name]
    shape = data.CountyShape(townships=townships, villages_per_township=villages)
    return Scenario(
        name=name,
        description=(
            f"10-year coronary risk over a synthetic county drawn from a copula fitted to "
            f"Framingham: 1 county hospital, {townships} township health centres, "
            f"{townships * villages} village clinics"
        ),
        data_schema="framingham",
        feature_names=framingham.FEATURE_NAMES,
        num_institutions=shape.num_institutions,
        loader=partial(_load, name),
        reference_scale={
            feature: framingham.REFERENCE_SCALE[field]
            for feature, field in zip(framingham.FEATURE_NAMES, framingham.FEATURES, strict=True)
        },
        defaults={
            "model": "risk-logreg",
            "num-server-rounds": 15,
            "local-steps": 20,
            "batch-size": 32,
            "learning-rate": 0.05,
            "optimizer": "sgd",
            "momentum": 0.9,
            # As framingham-county: the risk model's intercept recalibrated after the run
            "calibration": "intercept",
        },
        default_seeds=(42, 43, 44),
        registry_name="coronary-risk-10y",
        headline_metric=protocol.AUC,
    )


SCENARIOS = {name: register(_scenario(name)) for name in SIZES}
