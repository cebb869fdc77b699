"""Shared setup of the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis's "too slow" health check and per-example deadline are timings: on a shared
# 2-core machine they fail at random, and timings are never asserted in this suite.
settings.register_profile("countyfl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("countyfl")


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
