"""The scenario registry: names, shapes without reading rows, the cache, and what each provides."""

from __future__ import annotations

import pytest

from countyfl import scenarios
from countyfl.errors import CountyflError, UnknownNameError
from countyfl.scenarios import Scenario


@pytest.mark.parametrize("name", scenarios.names())
def test_shape_matches_the_loaded_data(name: str) -> None:
    scenario = scenarios.get(name)
    dataset = scenarios.load(name)
    assert (scenario.num_features, scenario.num_institutions) == (
        dataset.num_features,
        len(dataset.institutions),
    )
    assert dataset.feature_names == scenario.feature_names
    for institution in dataset.institutions:
        assert institution.x_train.shape[1] == dataset.num_features
        assert institution.x_test.shape[1] == dataset.num_features


@pytest.mark.parametrize("name", scenarios.names())
def test_every_scenario_provides_what_every_layer_asks(name: str) -> None:
    scenario = scenarios.get(name)
    assert scenario.name == name
    assert set(scenario.reference_scale) == set(scenario.feature_names)
    transform = scenario.input_transform()
    assert transform["schema"] == scenario.data_schema
    assert transform["names"] == list(scenario.feature_names)
    assert all(scale > 0 for scale in transform["scale"])
    assert scenario.registry_name and scenario.default_seeds and scenario.defaults


def test_load_is_cached_per_arguments() -> None:
    assert scenarios.load("framingham-county") is scenarios.load("framingham-county")
    assert scenarios.load("framingham-county", "", 3) is not scenarios.load("framingham-county")


@pytest.mark.parametrize("call", [scenarios.load, scenarios.get])
def test_unknown_scenario_names_the_valid_ones(call: object) -> None:
    with pytest.raises(UnknownNameError) as raised:
        call("mimic")  # type: ignore[operator]
    assert isinstance(raised.value, CountyflError)
    message = str(raised.value)
    assert "mimic" in message
    assert all(name in message for name in scenarios.names())


def test_a_scenario_is_registered_once() -> None:
    existing = scenarios.get("fed-heart-disease")
    assert scenarios.register(existing) is existing
    twin = Scenario(**{**existing.__dict__})
    with pytest.raises(ValueError, match="already registered"):
        scenarios.register(twin)
