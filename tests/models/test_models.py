"""The model registry and the architectures (one logit per row, Opacus-compatible)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from countyfl import models
from countyfl.errors import CountyflError, UnknownNameError

REGISTERED = ["diagnosis-logreg", "diagnosis-mlp", "risk-logreg", "risk-mlp"]


def test_registered_names_are_sorted_and_complete() -> None:
    assert models.names() == sorted(models.names())
    assert set(REGISTERED) <= set(models.names())


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("num_features", [1, 13, 14])
def test_every_model_gives_one_logit_per_row(name: str, num_features: int) -> None:
    model = models.build(name, num_features)
    out = model(torch.randn(5, num_features))
    assert out.shape == (5,)
    assert model(torch.randn(1, num_features)).shape == (1,)


@pytest.mark.parametrize("name", REGISTERED)
def test_every_model_is_opacus_compatible(name: str) -> None:
    model = models.build(name, 13)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_logistic_regression_is_one_linear_layer() -> None:
    model = models.build("diagnosis-logreg", 13)
    assert sum(p.numel() for p in model.parameters()) == 13 + 1


def test_unknown_model_names_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as raised:
        models.get("resnet-50")
    assert isinstance(raised.value, CountyflError)
    message = str(raised.value)
    assert "resnet-50" in message
    assert all(name in message for name in REGISTERED)
    assert not message.startswith(("'", '"'))  # KeyError's quoting is undone


@pytest.fixture
def scratch_name() -> Iterator[str]:
    name = "test-only-model"
    yield name
    models._REGISTRY.pop(name, None)


def test_register_adds_a_factory(scratch_name: str) -> None:
    @models.register(scratch_name)
    def factory(num_features: int) -> nn.Module:
        return nn.Linear(num_features, 2)

    assert scratch_name in models.names()
    assert models.get(scratch_name) is factory
    assert models.build(scratch_name, 3).in_features == 3  # type: ignore[union-attr]
