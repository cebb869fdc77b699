"""Simulations go to a local SuperLink with ``flwr run``, not Flower's deprecated entry point,
and leave nothing running behind them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from countyfl import scenarios
from countyfl.errors import SimulationError
from countyfl.simulations.engine import SimulationLink
from countyfl.simulations.runner import PATH_KEYS, build_config, run_federated


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not running.
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_stopped_link_leaves_no_process_and_no_folder() -> None:
    with SimulationLink() as link:
        link.wait_ready()
        assert link.process is not None and link.folder is not None
        pid, folder = link.process.pid, link.folder
        assert folder.stat().st_mode & 0o077 == 0  # owner-only
        assert _alive(pid)
    assert not _alive(pid)
    assert not folder.exists()
    with pytest.raises(SimulationError, match="stopped"):
        link.wait_ready()


def test_every_path_of_the_run_config_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = {
        "data-path": "exports/heart.csv",
        "encryption": "ckks",
        "he-secret-context": "keys/institutions-secret.ckks",
        "he-public-context": "keys/aggregator-public.ckks",
    }
    config = build_config(scenarios.get("fed-heart-disease"), 42, relative, Path("runs/x"))
    values = config.to_run_config()
    for key in PATH_KEYS:
        assert Path(str(values[key])).is_absolute(), key
    assert values["output-dir"] == str(tmp_path / "runs" / "x")
    assert values["sites-dir"] == str(tmp_path / "runs" / "x" / "sites")
    assert values["he-secret-context"] == str(tmp_path / "keys" / "institutions-secret.ckks")
    assert values["data-path"] == str(tmp_path / "exports" / "heart.csv")


@pytest.mark.e2e
def test_a_federation_runs_through_flwr_run_and_stops_its_superlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flwr.simulation

    def deprecated(*_: object, **__: object) -> None:
        raise AssertionError("flwr.simulation.run_simulation is deprecated: use flwr run")

    monkeypatch.setattr(flwr.simulation, "run_simulation", deprecated)
    scenario = scenarios.get("fed-heart-disease")
    # A relative output folder, as `countyfl simulate -o runs/x` gives: the ServerApp runs
    # in Flower's process, elsewhere, and must still write the run here.
    monkeypatch.chdir(tmp_path)
    config = build_config(
        scenario, 42, {"num-server-rounds": 2, "local-steps": 2, "dp": False}, Path("run")
    )
    ends: list[int] = []
    started: list[SimulationLink] = []
    original = SimulationLink.start

    def start(self: SimulationLink) -> None:
        original(self)
        started.append(self)

    monkeypatch.setattr(SimulationLink, "start", start)

    history = run_federated(config, scenario.num_institutions, ends.append)

    assert sorted(history.rounds) == [1, 2]
    assert ends == [1, 2]  # the progress view saw each round end
    assert (tmp_path / "run" / "history.json").is_file()
    (link,) = started
    assert link.process is None and link.folder is None  # stopped with the run


@pytest.mark.e2e
def test_a_run_that_fails_says_why(tmp_path: Path) -> None:
    scenario = scenarios.get("fed-heart-disease")
    # Every institution's evaluation needs more nodes than exist: the ServerApp stops.
    config = build_config(
        scenario,
        42,
        {"num-server-rounds": 1, "dp": False, "min-nodes": 5, "node-wait-seconds": 1},
        tmp_path / "run",
    )
    with pytest.raises(SimulationError, match="seed 42") as raised:
        run_federated(config, scenario.num_institutions)
    assert "4 connected, 5 needed (min-nodes)" in str(raised.value)
    # Worded for a simulation: its nodes are the engine's, not a site's to start.
    assert "one node per institution of the scenario" in str(raised.value)
    assert "countyfl node start" not in str(raised.value)
