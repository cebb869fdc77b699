"""Network architectures (diagnosis, risk) and a small name -> factory registry.

Every model is Opacus-compatible: linear layers and pointwise activations only, no
BatchNorm. Models output one logit per row; the probability is its sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from countyfl.errors import UnknownNameError

ModelFactory = Callable[[int], nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory ``(num_features) -> nn.Module`` under ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory

    return decorator


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> ModelFactory:
    """The factory registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown model {name!r}; choose one of {', '.join(names())}"
        ) from None


def build(name: str, num_features: int) -> nn.Module:
    """Build the model ``name`` for ``num_features`` inputs."""
    return get(name)(num_features)


class LogisticRegression(nn.Module):
    """One linear layer to a single logit (FLamby's Fed-Heart-Disease baseline model)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, 1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.linear(x).squeeze(-1)


class SmallMLP(nn.Module):
    """Two hidden layers with ReLU; no normalisation layers, so Opacus can wrap it."""

    def __init__(self, num_features: int, hidden: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.layers(x).squeeze(-1)


register("diagnosis-logreg")(LogisticRegression)
register("diagnosis-mlp")(SmallMLP)
register("risk-logreg")(LogisticRegression)
register("risk-mlp")(SmallMLP)
