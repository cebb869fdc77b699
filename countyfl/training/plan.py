"""What one round of local training does: the optimizer and its settings (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OptimizerName(StrEnum):
    """Local optimizers a task may ask for."""

    SGD = "sgd"
    ADAM = "adam"


@dataclass(frozen=True)
class TrainingPlan:
    """What one round of local training does.

    ``proximal_mu`` > 0 adds FedProx's proximal term (mu / 2) * ||w - w_global||^2
    (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).
    """

    local_steps: int
    batch_size: int
    learning_rate: float
    optimizer: OptimizerName = OptimizerName.SGD
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
