"""DP-SGD training of one model on one institution's rows, with Opacus.

Opacus's PrivacyEngine clips every per-sample gradient to ``max_grad_norm`` and adds
Gaussian noise (DP-SGD, Abadi et al., CCS 2016); its accountant is restored from the
institution's history before training and its history after training is returned, so
that the caller can store it in the ledger: epsilon composes over rounds and runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

from countyfl.clients.training import TrainingPlan, make_optimizer
from countyfl.data.federated import FloatArray
from countyfl.privacy.accounting import AccountantName, HistoryEntry, normalize_entry


class GradSampleMode(StrEnum):
    """Opacus's ways of computing per-sample gradients."""

    HOOKS = "hooks"
    EW = "ew"
    FUNCTORCH = "functorch"
    GHOST = "ghost"


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD parameters of one round."""

    noise_multiplier: float
    max_grad_norm: float
    accountant: AccountantName = AccountantName.PRV
    grad_sample_mode: GradSampleMode = GradSampleMode.HOOKS


@dataclass(frozen=True)
class PrivateTrainOutcome:
    """Mean loss over non-empty batches, DP-SGD steps run, sample rate, history after."""

    mean_loss: float
    steps: int
    sample_rate: float
    history_after: list[HistoryEntry]


class TensorRows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Features and labels as tensors; training indexes them a whole batch at a time."""

    def __init__(self, x: FloatArray, y: FloatArray) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.ascontiguousarray(y))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def train_private(
    model: nn.Module,
    x: FloatArray,
    y: FloatArray,
    plan: TrainingPlan,
    privacy: PrivacyPlan,
    history_before: Sequence[HistoryEntry],
) -> PrivateTrainOutcome:
    """Run ``plan.local_steps`` DP-SGD steps on (x, y), updating ``model`` in place.

    Batches are Poisson-sampled (each row joins a batch with probability
    1 / batches-per-epoch), as DP-SGD's analysis requires; a batch may be empty, and an
    empty batch is still a step that adds noise and is accounted. FedProx's proximal
    pull towards the starting weights is applied after each noisy step: it does not
    touch the data, so it is post-processing and costs no privacy.
    """
    with warnings.catch_warnings():
        # Opacus warns that its secure RNG is off: countyfl uses the standard RNG
        # (documented in the README); Opacus's secure_mode is a later switch.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=privacy.accountant.value)
    engine.accountant.load_state_dict(
        {
            "history": [normalize_entry(e) for e in history_before],
            "mechanism": engine.accountant.mechanism(),
        }
    )
    anchor = [p.detach().clone() for p in model.parameters()] if plan.proximal_mu > 0 else []
    rows = TensorRows(x, y)
    loader = DataLoader(rows, batch_size=plan.batch_size)
    made = engine.make_private(
        module=model,
        optimizer=make_optimizer(model, plan),
        criterion=nn.BCEWithLogitsLoss(),
        data_loader=loader,
        noise_multiplier=privacy.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=privacy.grad_sample_mode.value,
    )
    if privacy.grad_sample_mode is GradSampleMode.GHOST:
        # Ghost clipping also wraps the loss: it runs the second backward pass itself.
        private_model, optimizer, criterion, private_loader = made
    else:
        private_model, optimizer, private_loader = made
        criterion = nn.BCEWithLogitsLoss()
    private_model.train()
    steps, total, counted = 0, 0.0, 0
    features_all, labels_all = rows.x, rows.y
    # Draw Opacus's own Poisson batches but index the tensors directly: the DataLoader's
    # fetch-and-collate machinery cost more per step than the clipping it feeds.
    sampler = private_loader.batch_sampler
    assert sampler is not None
    with warnings.catch_warnings():
        # Opacus's hooks fire on inputs that need no gradient; expected and harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        while steps < plan.local_steps:
            for indices in sampler:
                optimizer.zero_grad(set_to_none=True)
                if indices:
                    output = private_model(features_all[indices])
                    loss = criterion(output, labels_all[indices])
                    loss.backward()
                    total += float(loss.detach())
                    counted += 1
                else:
                    # No row sampled: still a step that adds noise and is accounted. Every
                    # per-sample gradient mode gets the same empty per-sample gradients
                    # (the "ew" mode cannot run a forward pass on an empty batch).
                    for parameter in private_model.parameters():
                        if privacy.grad_sample_mode is GradSampleMode.GHOST:
                            parameter.grad = torch.zeros_like(parameter)
                        else:
                            parameter.grad_sample = torch.zeros(
                                (0, *parameter.shape), dtype=parameter.dtype
                            )
                optimizer.step()
                if anchor:
                    with torch.no_grad():
                        for parameter, start in zip(model.parameters(), anchor, strict=True):
                            parameter.sub_(
                                plan.learning_rate * plan.proximal_mu * (parameter - start)
                            )
                steps += 1
                if steps >= plan.local_steps:
                    break
    history_after = [normalize_entry(e) for e in engine.accountant.state_dict()["history"]]
    _detach_hooks(private_model)
    return PrivateTrainOutcome(
        mean_loss=total / counted if counted else float("nan"),
        steps=steps,
        sample_rate=float(private_loader.sample_rate),
        history_after=history_after,
    )


def _detach_hooks(private_model: nn.Module) -> None:
    remove = getattr(private_model, "_close", None)
    if callable(remove):
        remove()
