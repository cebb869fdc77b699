"""The run configuration: parsed once from Flower's flat kebab-case mapping."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from countyfl import models, scenarios
from countyfl.errors import ConfigError
from countyfl.run_config import RunConfig, StrategyName, parse_run_config
from countyfl.training.plan import OptimizerName

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

_valid_values: dict[str, st.SearchStrategy[Any]] = {
    "scenario": st.sampled_from(scenarios.names()),
    "model": st.sampled_from(models.names()),
    "num-server-rounds": st.integers(1, 10_000),
    "local-steps": st.integers(1, 100_000),
    "batch-size": st.integers(1, 100_000),
    "learning-rate": st.floats(1e-6, 10.0),
    "optimizer": st.sampled_from([o.value for o in OptimizerName]),
    "momentum": st.floats(0.0, 0.999),
    "weight-decay": st.floats(0.0, 1.0),
    "seed": st.integers(0, 2**31),
    "partition-seed": st.integers(0, 2**31),
    "data-path": st.text(max_size=20),
    "output-dir": st.text(max_size=20),
}


@st.composite
def run_configs(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.sets(st.sampled_from(sorted(_valid_values))))
    config = {key: draw(_valid_values[key]) for key in keys}
    strategy = draw(st.sampled_from([s.value for s in StrategyName]))
    config["strategy"] = strategy
    mu_low = 1e-6 if strategy == StrategyName.FEDPROX else 0.0
    if strategy == StrategyName.FEDPROX or draw(st.booleans()):
        config["proximal-mu"] = draw(st.floats(mu_low, 100.0))
    return config


def test_defaults_match_the_apps_pyproject_config() -> None:
    flower = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    parsed = parse_run_config(flower)
    assert parsed == RunConfig()
    assert set(parsed.to_run_config()) == set(flower)
    assert parsed.to_run_config() == flower


@settings(max_examples=150, deadline=None)
@given(config=run_configs())
def test_parse_round_trips_to_run_config(config: dict[str, Any]) -> None:
    parsed = parse_run_config(config)
    flat = parsed.to_run_config()
    for key, value in config.items():
        assert flat[key] == value
    assert all(isinstance(v, str | int | float) for v in flat.values())
    assert all(key == key.lower() and "_" not in key for key in flat)
    assert parse_run_config(flat) == parsed


def test_config_is_frozen() -> None:
    config = RunConfig()
    with pytest.raises(Exception, match="frozen"):
        config.seed = 3  # type: ignore[misc]


def test_unknown_key_raises_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="num-server-round"):
        parse_run_config({"num-server-round": 3})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", 0),
        ("num-server-rounds", 10_001),
        ("local-steps", 0),
        ("batch-size", 0),
        ("learning-rate", 0.0),
        ("learning-rate", 11.0),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight-decay", -1e-3),
        ("proximal-mu", -0.5),
        ("seed", -1),
        ("partition-seed", -1),
        ("scenario", "mimic-iv"),
        ("strategy", "scaffold"),
        ("optimizer", "lbfgs"),
        ("learning-rate", "fast"),
    ],
)
def test_bad_value_raises_config_error_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_run_config({key: value})
    message = str(raised.value)
    assert f"{key}:" in message
    others = [k for k in RunConfig().to_run_config() if k != key]
    blamed = [k for k in others if re.search(rf"(?<![\w-]){re.escape(k)}:", message)]
    assert blamed == [], "another key is blamed"


def test_fedprox_without_proximal_mu_raises() -> None:
    with pytest.raises(ConfigError, match="proximal-mu"):
        parse_run_config({"strategy": "fedprox"})
    with pytest.raises(ConfigError, match="proximal-mu"):
        parse_run_config({"strategy": "fedprox", "proximal-mu": 0.0})


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_run_config({"local-steps": 0, "batch-size": -2, "colour": "red"})
    message = str(raised.value)
    assert "local-steps" in message and "batch-size" in message and "colour" in message


def test_unknown_model_is_refused_with_the_valid_names() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_run_config({"model": "resnet-50"})
    message = str(raised.value)
    assert "resnet-50" in message
    assert all(name in message for name in models.names())


def test_training_plan_applies_proximal_mu_only_for_fedprox() -> None:
    fedprox = parse_run_config(
        {
            "strategy": "fedprox",
            "proximal-mu": 0.3,
            "local-steps": 7,
            "batch-size": 9,
            "learning-rate": 0.2,
            "optimizer": "adam",
            "momentum": 0.5,
            "weight-decay": 0.01,
        }
    )
    plan = fedprox.training_plan
    assert plan.proximal_mu == 0.3
    assert (plan.local_steps, plan.batch_size, plan.learning_rate) == (7, 9, 0.2)
    assert plan.optimizer is OptimizerName.ADAM
    assert (plan.momentum, plan.weight_decay) == (0.5, 0.01)
    fedavg = parse_run_config({"strategy": "fedavg", "proximal-mu": 0.3})
    assert fedavg.training_plan.proximal_mu == 0.0


def test_enums_are_parsed_from_strings() -> None:
    config = parse_run_config({"scenario": "framingham-county", "strategy": "fedavg"})
    assert config.scenario == "framingham-county"
    assert config.strategy is StrategyName.FEDAVG
    assert config.to_run_config()["scenario"] == "framingham-county"
