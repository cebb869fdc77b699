"""A local county that fails to come up stops what it started."""

from __future__ import annotations

from pathlib import Path

import pytest

from countyfl.deployment import local_county
from countyfl.deployment.local_county import LocalCounty
from countyfl.deployment.processes import DeploymentError


def test_a_county_that_does_not_come_up_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a SuperLink whose county failed to start (a node that never connected)
    kept running after the benchmark or test that started it had ended."""
    monkeypatch.setattr(local_county, "countyfl_command", lambda *args: ["sleep", "300"])

    def never(*args: object) -> None:
        raise DeploymentError("timed out after 0 s waiting for the SuperLink")

    monkeypatch.setattr(local_county, "wait_for", never)
    county = LocalCounty(tmp_path)
    with pytest.raises(DeploymentError, match="waiting for the SuperLink"):
        county.start()
    (superlink,) = county.processes
    assert superlink.wait(timeout=30) is not None  # stopped, not left behind
