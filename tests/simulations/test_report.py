"""The report from a simulation result built by hand: numbers, privacy section, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from countyfl import protocol, scenarios
from countyfl.run_config import parse_run_config
from countyfl.runs import FederationHistory, RoundRecord
from countyfl.simulations.baselines import POOLED_TEST
from countyfl.simulations.report import render_markdown, summarize, write_report
from countyfl.simulations.runner import SeedResult, SimulationResult

SCENARIO = "fed-heart-disease"


def _metrics(accuracy: float) -> dict[str, float]:
    return {
        protocol.ACCURACY: accuracy,
        protocol.AUC: accuracy + 0.05,
        protocol.LOSS: 1 - accuracy,
        protocol.BRIER: 0.2,
        protocol.ECE: 0.05,
    }


def _result(tmp_path: Path, **overrides: object) -> SimulationResult:
    scenario = scenarios.get(SCENARIO)
    dataset = scenarios.load(SCENARIO)
    config = parse_run_config(
        {**scenario.defaults, "num-server-rounds": 2, "accountant": "rdp", **overrides}
    )
    ids = [i.institution_id for i in dataset.institutions]
    seeds = []
    for seed, accuracy in ((42, 0.8), (43, 0.7)):
        history = FederationHistory()
        for server_round in (1, 2):
            history.rounds[server_round] = RoundRecord(
                train={
                    p: {
                        protocol.NUM_EXAMPLES: 50.0,
                        protocol.EPSILON: 0.5 * server_round,
                        protocol.NOISE_MULTIPLIER: 2.0 + p,
                        protocol.SAMPLE_RATE: 0.25,
                        protocol.AGGREGATION_WEIGHT: 10.0 * (p + 1),
                    }
                    for p in range(len(ids))
                },
                evaluate={p: {protocol.NUM_EXAMPLES: 20.0, **_metrics(accuracy)} for p in range(4)},
                failures=["train: node 9: no reply (node lost or timed out)"]
                if server_round == 2
                else [],
                institutions=dict(enumerate(ids)),
            )
        methods = {
            method: {**{i: _metrics(accuracy - shift) for i in ids}, POOLED_TEST: _metrics(0.75)}
            for method, shift in (("federated", 0.0), ("pooled", 0.02))
        }
        _, _, x_test, _ = dataset.pooled()
        predictions = {m: np.full(len(x_test), 0.4) for m in methods}
        seeds.append(SeedResult(seed, history, methods, 12.0, predictions, dict.fromkeys(ids, 0.5)))
    return SimulationResult(scenario, config, dataset, seeds, tmp_path / "report")


def test_the_headline_is_the_mean_of_institutions_over_seeds(tmp_path: Path) -> None:
    summary = summarize(_result(tmp_path))
    headline = summary["methods"]["federated"]["summary"]["mean-of-institutions"]["accuracy"]
    assert headline["mean"] == pytest.approx(0.75)
    assert headline["std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert summary["seeds"] == [42, 43]


def test_the_privacy_section_splits_each_runs_epsilon(tmp_path: Path) -> None:
    summary = summarize(_result(tmp_path))
    split = summary["privacy"]["per-institution"]["cleveland"]["budget-split"]
    assert 0 < split["noisy-count"] < split["run"] and 0 < split["training"] < split["run"]
    assert split["run"] < split["noisy-count"] + split["training"]  # tighter than a sum
    text = render_markdown(summary)
    assert "epsilon: count / training / run" in text
    assert "CSPRNG" in text and "does NOT hold" not in text
    assert "train-loss" not in json.dumps(summary)


def test_seeded_randomness_is_stated_in_the_report(tmp_path: Path) -> None:
    text = render_markdown(summarize(_result(tmp_path, **{"dp-randomness": "seeded"})))
    assert "does NOT hold against anyone who knows the seed" in text


def test_distributed_noise_and_its_assumption_are_stated_in_the_report(tmp_path: Path) -> None:
    from tests.federation.support import DISTRIBUTED_NOISE

    summary = summarize(_result(tmp_path, **DISTRIBUTED_NOISE))
    assert summary["privacy"]["noise"] == "distributed"
    assert summary["privacy"]["noise-shares"] == 4
    text = render_markdown(summary)
    assert "**Distributed noise.**" in text and "at least 4 updates" in text
    assert "**Distributed noise.**" not in render_markdown(summarize(_result(tmp_path)))


def test_without_dp_the_report_says_so_and_splits_nothing(tmp_path: Path) -> None:
    summary = summarize(_result(tmp_path, dp=False))
    assert summary["privacy"]["per-institution"]["cleveland"]["budget-split"] is None
    assert "Differential privacy was off" in render_markdown(summary)


def test_failures_are_listed_and_the_files_written(tmp_path: Path) -> None:
    result = _result(tmp_path)
    report = write_report(result)
    text = report.read_text(encoding="utf-8")
    assert "seed 43 round 2: train: node 9: no reply" in text
    folder = result.output_dir
    for name in ("metrics.json", "institution-metric-per-round.png", "federated-vs-baselines.png"):
        assert (folder / name).stat().st_size > 0, name
    assert json.loads((folder / "metrics.json").read_text())["scenario"] == SCENARIO


def test_the_report_summarises_each_level_against_local_only_and_pooled(tmp_path: Path) -> None:
    result = _result(tmp_path)
    ids = [i.institution_id for i in result.dataset.institutions]
    for seed_result, accuracy in zip(result.seeds, (0.8, 0.7), strict=True):
        for own in ids:  # each local-only model: 0.1 below federated everywhere
            seed_result.methods[f"local-{own}"] = {
                **{i: _metrics(accuracy - 0.1) for i in ids},
                POOLED_TEST: _metrics(0.6),
            }
    summary = summarize(result)
    levels = summary["by-level"]
    assert sum(entry["institutions"] for entry in levels.values()) == len(ids)
    assert sum(entry["weight-share"] for entry in levels.values()) == pytest.approx(1)
    for entry in levels.values():
        # The headline (accuracy): seeds 0.8 and 0.7 federated, pooled 0.02 and local 0.1 below
        assert summary["headline-metric"] == protocol.ACCURACY
        assert entry["federated"]["mean"] == pytest.approx(0.75)
        assert entry["pooled"]["mean"] == pytest.approx(0.73)
        assert entry["local-only-own"]["mean"] == pytest.approx(0.65)
        assert entry["noise-multiplier"]["mean"] > 0
        assert entry["dp-steps-per-round"]["mean"] == result.config.local_steps
    assert "## By level" in render_markdown(summary)


def test_a_county_report_has_a_table_per_township(tmp_path: Path) -> None:
    import dataclasses

    result = _result(tmp_path)
    townships = ["township-01", "township-01", "township-02", "county-seat"]
    institutions = tuple(
        dataclasses.replace(i, township=t)
        for i, t in zip(result.dataset.institutions, townships, strict=True)
    )
    result.dataset = dataclasses.replace(result.dataset, institutions=institutions)
    summary = summarize(result)
    by_township = summary["by-township"]
    assert {k: v["institutions"] for k, v in by_township.items()} == {
        "township-01": 2,
        "township-02": 1,
        "county-seat": 1,
    }
    assert by_township["township-01"]["federated"]["mean"] == pytest.approx(0.75)
    # Each group's share of the weights its sites sent (10, 20, 30, 40), not of their rows
    assert by_township["township-01"]["weight-share"] == pytest.approx(30 / 100)
    assert by_township["county-seat"]["weight-share"] == pytest.approx(40 / 100)
    assert "## By township" in render_markdown(summary)
    # Without townships (the four real hospitals), no such table.
    assert summarize(_result(tmp_path))["by-township"] == {}


def test_under_the_epoch_policy_the_report_accounts_each_sites_real_steps(tmp_path: Path) -> None:
    import math

    from countyfl.privacy.accounting import epsilon_of, gaussian_entry

    result = _result(tmp_path, **{"local-steps-policy": "epoch", "local-steps": 20})
    config = result.config
    steps = math.ceil(50 / config.batch_size)  # every site's noisy count is 50 here
    assert steps < 20
    summary = summarize(result)
    for entry in summary["by-level"].values():
        assert entry["dp-steps-per-round"]["mean"] == steps
    # The budget split composes the steps the site ran, not the task's local-steps.
    cleveland = summary["privacy"]["per-institution"]["cleveland"]
    training = (2.0, 0.25, steps * config.num_server_rounds)
    assert cleveland["budget-split"]["training"] == pytest.approx(
        epsilon_of([training], config.delta, config.accountant)
    )
    assert cleveland["budget-split"]["run"] == pytest.approx(
        epsilon_of([gaussian_entry(config.count_noise), training], config.delta, config.accountant)
    )
