"""Shared setup of the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def countyfl_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test (and every process it starts) keeps its registry, audit log and keys in a
    fresh COUNTYFL_HOME, never in the developer's ~/.countyfl."""
    home = tmp_path_factory.mktemp("countyfl-home")
    monkeypatch.setenv("COUNTYFL_HOME", str(home))
    monkeypatch.delenv("COUNTYFL_DATABASE_URL", raising=False)
    monkeypatch.delenv("COUNTYFL_TOKEN", raising=False)
    return home
