"""Local training and evaluation of one model on one institution's arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from countyfl import protocol
from countyfl.data.federated import FloatArray
from countyfl.training.metrics import classification_metrics
from countyfl.training.plan import OptimizerName, TrainingPlan


@dataclass(frozen=True)
class TrainOutcome:
    """Mean training loss over the steps run, and the number of steps."""

    mean_loss: float
    steps: int


def make_optimizer(model: nn.Module, plan: TrainingPlan) -> torch.optim.Optimizer:
    """The optimizer the plan names, over the model's parameters."""
    if plan.optimizer is OptimizerName.ADAM:
        return torch.optim.Adam(
            model.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=plan.learning_rate,
        momentum=plan.momentum,
        weight_decay=plan.weight_decay,
    )


def batch_indices(
    num_rows: int, plan: TrainingPlan, generator: torch.Generator
) -> list[torch.Tensor]:
    """Index batches for ``plan.local_steps`` steps: shuffled epochs, reshuffled when used up."""
    batches: list[torch.Tensor] = []
    order = torch.randperm(num_rows, generator=generator)
    position = 0
    size = min(plan.batch_size, num_rows)
    while len(batches) < plan.local_steps:
        if position + size > num_rows:
            order = torch.randperm(num_rows, generator=generator)
            position = 0
        batches.append(order[position : position + size])
        position += size
    return batches


def train(
    model: nn.Module,
    x: FloatArray,
    y: FloatArray,
    plan: TrainingPlan,
    generator: torch.Generator,
) -> TrainOutcome:
    """Run ``plan.local_steps`` steps of minibatch training on (x, y), in place.

    The model's weights on entry are the anchor of FedProx's proximal term.
    """
    if len(x) == 0:
        return TrainOutcome(mean_loss=float("nan"), steps=0)
    features = torch.from_numpy(np.ascontiguousarray(x))
    labels = torch.from_numpy(np.ascontiguousarray(y))
    anchor = [p.detach().clone() for p in model.parameters()] if plan.proximal_mu > 0 else []
    optimizer = make_optimizer(model, plan)
    criterion = nn.BCEWithLogitsLoss()
    model.train()
    total = 0.0
    batches = batch_indices(len(features), plan, generator)
    for index in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(features[index]), labels[index])
        if anchor:
            proximal = sum(
                ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
            )
            loss = loss + 0.5 * plan.proximal_mu * proximal
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return TrainOutcome(mean_loss=total / len(batches), steps=len(batches))


@torch.no_grad()
def predict_proba(model: nn.Module, x: FloatArray) -> np.ndarray:
    """Predicted probability of the positive class for every row."""
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x)))
    return torch.sigmoid(logits).numpy().astype(np.float64)


@torch.no_grad()
def evaluate(model: nn.Module, x: FloatArray, y: FloatArray) -> dict[str, float]:
    """Loss, accuracy, AUC, Brier score and ECE of the model on (x, y)."""
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x)))
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)))
    metrics = classification_metrics(torch.sigmoid(logits).numpy(), y)
    metrics[protocol.LOSS] = loss
    return metrics


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's parameters and buffers as numpy arrays, in state-dict order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays in state-dict order into the model."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} arrays for the model, got {len(weights)}")
    model.load_state_dict(
        {name: torch.from_numpy(np.asarray(w)) for name, w in zip(state, weights, strict=True)}
    )
