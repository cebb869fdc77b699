"""Conversions between PyTorch models and Flower records."""

from __future__ import annotations

from flwr.app import ArrayRecord
from torch import nn


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord."""
    return ArrayRecord(model.state_dict())


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Load an ArrayRecord into the model; raises ValueError when the shapes do not fit."""
    try:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    except RuntimeError as error:
        raise ValueError(f"the received weights do not fit the model: {error}") from error
