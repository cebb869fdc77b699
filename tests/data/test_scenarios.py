"""The scenario entry point: names, shapes without reading rows, and the per-process cache."""

from __future__ import annotations

import pytest

from countyfl.data import SCENARIO_NAMES, load_scenario, scenario_shape
from countyfl.errors import CountyflError, UnknownNameError


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_scenario_shape_matches_the_loaded_data(name: str) -> None:
    dataset = load_scenario(name)
    assert scenario_shape(name) == (dataset.num_features, len(dataset.institutions))
    for institution in dataset.institutions:
        assert institution.x_train.shape[1] == dataset.num_features
        assert institution.x_test.shape[1] == dataset.num_features


def test_load_scenario_is_cached_per_arguments() -> None:
    assert load_scenario("framingham-county") is load_scenario("framingham-county")
    assert load_scenario("framingham-county", "", 3) is not load_scenario("framingham-county")


@pytest.mark.parametrize("call", [load_scenario, scenario_shape])
def test_unknown_scenario_names_the_valid_ones(call: object) -> None:
    with pytest.raises(UnknownNameError) as raised:
        call("mimic")  # type: ignore[operator]
    assert isinstance(raised.value, CountyflError)
    message = str(raised.value)
    assert "mimic" in message
    assert all(name in message for name in SCENARIO_NAMES)
