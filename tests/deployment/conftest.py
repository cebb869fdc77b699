"""Shared set-up of the deployment tests: a hospital's export and its site.toml in a tmp dir."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from countyfl.data import fed_heart_disease
from countyfl.data.federated import FederatedDataset
from countyfl.deployment.site import render_site_toml
from countyfl.deployment.site_data import export_hospital_csv

MakeSite = Callable[..., Path]


@pytest.fixture(scope="session")
def fed_heart() -> FederatedDataset:
    """The simulation's own Fed-Heart-Disease: the oracle for a site's data."""
    return fed_heart_disease.load()


@pytest.fixture
def make_site(tmp_path: Path) -> MakeSite:
    """Write ``<folder>/export.csv`` (one UCI hospital) and ``<folder>/site.toml``; return it."""

    def make(
        hospital: str = "Cleveland",
        *,
        folder: str = "site",
        rename: Mapping[str, str] | None = None,
        columns: Mapping[str, str] | None = None,
        institution_id: str | None = None,
        budget_epsilon: float = 8.0,
        delta: float = 1e-3,
        **keys: str,
    ) -> Path:
        directory = tmp_path / folder
        export_hospital_csv(hospital, directory / "export.csv", rename=rename)
        site_toml = directory / "site.toml"
        site_toml.write_text(
            render_site_toml(
                institution_id=institution_id or fed_heart_disease.HOSPITAL_IDS[hospital],
                name=hospital,
                level="county",
                data_path="export.csv",
                columns=columns,
                budget_epsilon=budget_epsilon,
                delta=delta,
                **keys,
            ),
            encoding="utf-8",
        )
        return site_toml

    return make
