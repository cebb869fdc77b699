"""A simulation runs on this machine's own Ray, or joins a Ray cluster named by RAY_ADDRESS."""

from __future__ import annotations

import pytest

from countyfl.simulations.engine import (
    RAY_ADDRESS_ENV,
    RAY_INLINE_BYTES,
    federation_config,
    ray_environment,
)


def test_without_a_cluster_ray_starts_here_sized_to_the_institutions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    config = federation_config(4, verbose=False)
    assert config["num-supernodes"] == 4
    assert 1 <= config["init-args-num-cpus"] <= 4
    assert config["init-args-log-to-driver"] is False
    # Ray reads its system settings from RAY_<name> in every process it starts.
    assert ray_environment() == {"RAY_max_direct_call_object_size": str(RAY_INLINE_BYTES)}


def test_with_ray_address_the_simulation_joins_the_cluster_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray refuses num_cpus and system settings when joining a running cluster: the
    # cluster's size and settings are those of its `ray start` commands.
    monkeypatch.setenv(RAY_ADDRESS_ENV, " 10.0.0.1:6379 ")
    config = federation_config(240, verbose=True)
    assert "init-args-num-cpus" not in config
    assert config["num-supernodes"] == 240
    assert config["init-args-log-to-driver"] is True
    assert ray_environment() == {RAY_ADDRESS_ENV: "10.0.0.1:6379"}
