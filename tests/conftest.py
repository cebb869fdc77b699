"""Shared setup of the whole suite."""

from __future__ import annotations

from collections import Counter
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with end-to-end tests (Flower runs, a minute each) first, most of them first.

    Under ``-n 2`` (pytest-xdist, one file per worker at a time) the long files then start
    at once on both cores, instead of one of them running alone at the end of the suite.
    Within a file, and among files of as many e2e tests, the collection's order stays.
    """
    slow = Counter(item.path for item in items if item.get_closest_marker("e2e") is not None)
    items.sort(key=lambda item: -slow[item.path])
