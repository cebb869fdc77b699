"""A simulation runs on this machine's own Ray, or joins a Ray cluster named by RAY_ADDRESS."""

from __future__ import annotations

import pytest

from countyfl.simulations.runner import RAY_ADDRESS_ENV, ray_init_args


def test_without_a_cluster_ray_starts_here_sized_to_the_institutions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    args = ray_init_args(4, verbose=False)
    assert "address" not in args
    assert 1 <= args["num_cpus"] <= 4
    assert args["_system_config"] == {"max_direct_call_object_size": 1 << 20}


def test_with_ray_address_the_simulation_joins_the_cluster_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray refuses num_cpus and _system_config when joining a running cluster: the cluster's
    # size and settings are those of its `ray start` commands.
    monkeypatch.setenv(RAY_ADDRESS_ENV, " 10.0.0.1:6379 ")
    assert ray_init_args(240, verbose=True) == {"address": "10.0.0.1:6379", "log_to_driver": True}
