"""A loaded model ready to serve: probabilities and the features that pushed them most.

Probabilities come from ``countyfl.training.local.predict_proba``, the very function
evaluation used, on the standardised input. Explanations: for logistic regression each
feature's contribution to the logit is exactly ``weight x standardised value``; for other
networks it is the gradient of the logit times the input (a local, first-order account).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from countyfl import models
from countyfl.errors import UnknownNameError
from countyfl.registry.schemas import FeatureTransform, ModelVersionPublic
from countyfl.serving.errors import ModelNotServingError
from countyfl.serving.features import InputSpec, spec_for
from countyfl.training.local import predict_proba

Explanation = Literal["weight-times-standardized-value", "gradient-times-input"]
TOP_FEATURES = 3


@dataclass(frozen=True)
class FeatureContribution:
    """One feature's push on the logit (positive: towards disease or risk)."""

    feature: str
    contribution: float


@dataclass(frozen=True)
class ServedModel:
    """A production version loaded once, with its checked artifact and input transform."""

    name: str
    version: int
    sha256: str
    architecture: str
    transform: FeatureTransform
    spec: InputSpec
    module: nn.Module

    @property
    def label(self) -> str:
        """``NAME vVERSION``."""
        return f"{self.name} v{self.version}"

    @property
    def explanation(self) -> Explanation:
        """How :meth:`contributions` explains a prediction."""
        if isinstance(self.module, models.LogisticRegression):
            return "weight-times-standardized-value"
        return "gradient-times-input"

    def probabilities(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The positive class's probability for every standardised row."""
        return predict_proba(self.module, inputs)

    def contributions(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Per row and feature, the push on the logit (see the module docstring)."""
        if isinstance(self.module, models.LogisticRegression):
            weight: npt.NDArray[np.float64] = np.asarray(
                self.module.linear.weight.detach().numpy(), dtype=np.float64
            )
            products: npt.NDArray[np.float64] = np.asarray(inputs, dtype=np.float64) * weight
            return products
        x = torch.from_numpy(np.ascontiguousarray(inputs)).requires_grad_(True)
        self.module.eval()
        self.module(x).sum().backward()
        assert x.grad is not None
        return (x.grad * x).detach().numpy().astype(np.float64)

    def top_features(
        self, contributions: npt.NDArray[np.float64], count: int = TOP_FEATURES
    ) -> list[FeatureContribution]:
        """The ``count`` features of one row with the largest absolute contribution."""
        order = np.argsort(-np.abs(contributions), kind="stable")[:count]
        return [
            FeatureContribution(self.transform.names[i], float(contributions[i])) for i in order
        ]


def build_served_model(version: ModelVersionPublic, state: dict[str, Any]) -> ServedModel:
    """A :class:`ServedModel` from a registry version and its checked state dict.

    Raises
    ------
    ModelNotServingError
        If the version has no input transform, an unknown architecture, or weights that do
        not fit the architecture for the transform's number of features.
    """
    label = version.label
    if version.features is None:
        raise ModelNotServingError(
            f"{label} cannot serve: it was registered without an input transform (model.json "
            "has no 'features'); publish and register the model again, then promote it"
        )
    spec = spec_for(version.features, label)
    try:
        module = models.build(version.architecture, len(version.features.names))
    except UnknownNameError as error:
        raise ModelNotServingError(f"{label} cannot serve: {error}") from None
    try:
        module.load_state_dict({key: torch.from_numpy(np.asarray(v)) for key, v in state.items()})
    except (RuntimeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotServingError(
            f"{label} cannot serve: its weights do not fit {version.architecture} with "
            f"{len(version.features.names)} features ({first})"
        ) from None
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
        if not bool(torch.isfinite(parameter).all()):
            # Refused at registration since issue 13; a version registered before is caught here.
            raise ModelNotServingError(
                f"{label} cannot serve: its weights hold a value that is not a finite number; "
                "an admin must archive the version"
            )
    return ServedModel(
        name=version.name,
        version=version.version,
        sha256=version.artifact_sha256,
        architecture=version.architecture,
        transform=version.features,
        spec=spec,
        module=module,
    )
