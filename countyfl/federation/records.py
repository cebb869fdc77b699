"""Conversions between PyTorch models and Flower records."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from countyfl import protocol


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord."""
    return ArrayRecord(model.state_dict())


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Load an ArrayRecord into the model; raises ValueError when the shapes do not fit."""
    try:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    except RuntimeError as error:
        raise ValueError(f"the received weights do not fit the model: {error}") from error


def arrays_of(content: RecordDict) -> ArrayRecord:
    """The model weights a task carries; ValueError if the message has none."""
    record = content.get(protocol.ARRAYS)
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"the task carries no ArrayRecord under {protocol.ARRAYS!r}")
    return record


def server_round_of(content: RecordDict) -> int:
    """The server round a task belongs to (0 when the server did not say)."""
    record = content.get(protocol.CONFIG)
    value = record.get(protocol.SERVER_ROUND, 0) if isinstance(record, ConfigRecord) else 0
    return int(value) if isinstance(value, int | float) else 0
