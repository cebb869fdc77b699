"""Common clinical schema, real-data loaders, validation and quarantine.

:func:`load_scenario` is the one entry point the federation and the runner use; it caches
per process so that a simulated institution does not re-read its CSV every round.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from countyfl.data import fed_heart_disease, framingham
from countyfl.data.federated import CareLevel, FederatedDataset, InstitutionData
from countyfl.errors import UnknownNameError

__all__ = [
    "CareLevel",
    "FederatedDataset",
    "InstitutionData",
    "load_scenario",
    "scenario_shape",
]

SCENARIO_NAMES = ("fed-heart-disease", "framingham-county")


def check_scenario_name(name: str) -> None:
    if name not in SCENARIO_NAMES:
        raise UnknownNameError(
            f"unknown scenario {name!r}; choose one of {', '.join(SCENARIO_NAMES)}"
        )


@lru_cache(maxsize=8)
def load_scenario(name: str, data_path: str = "", partition_seed: int = 2026) -> FederatedDataset:
    """The preprocessed federated data set of scenario ``name`` (cached per process)."""
    check_scenario_name(name)
    path = Path(data_path) if data_path else None
    if name == "fed-heart-disease":
        return fed_heart_disease.load(path)
    return framingham.load(path, partition_seed=partition_seed)


def scenario_shape(name: str) -> tuple[int, int]:
    """(number of features, number of institutions) of a scenario, without reading any rows."""
    check_scenario_name(name)
    if name == "fed-heart-disease":
        return len(fed_heart_disease.FEATURE_NAMES), len(fed_heart_disease.HOSPITALS)
    return len(framingham.FEATURE_NAMES), len(framingham.CountyLayout().institutions())
