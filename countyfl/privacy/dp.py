"""DP-SGD training of one model on one institution's rows, with Opacus.

Opacus's PrivacyEngine clips every per-sample gradient to ``max_grad_norm`` and adds
Gaussian noise (DP-SGD, Abadi et al., CCS 2016); its accountant is restored from the
institution's history before training and its history after training is returned, so
that the caller can store it in the ledger: epsilon composes over rounds and runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from countyfl.data.federated import FloatArray
from countyfl.errors import ConfigError
from countyfl.privacy.accounting import (
    HistoryEntry,
    merge_history,
    poisson_sample_rate,
)
from countyfl.privacy.modes import AccountantName, GradSampleMode
from countyfl.privacy.randomness import secret_generator
from countyfl.training.local import make_optimizer
from countyfl.training.plan import TrainingPlan


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD parameters of one round.

    ``sample_rate`` is the Poisson rate the sampler uses and the accountant records, and
    ``expected_batch_size`` the divisor of each noisy gradient sum. Both must be fixed
    before the round sees the data (countyfl derives them from the institution's noisy,
    accounted example count); None takes Opacus's convention from the rows at hand,
    1 / ceil(rows / batch size) and rate x rows, which is for tests and tools only.
    """

    noise_multiplier: float
    max_grad_norm: float
    accountant: AccountantName = AccountantName.PRV
    grad_sample_mode: GradSampleMode = GradSampleMode.HOOKS
    sample_rate: float | None = None
    expected_batch_size: float | None = None
    noise_shares: int = 1
    """Distributed noise: this site draws ``noise_multiplier / sqrt(noise_shares)`` and the
    sum of at least ``noise_shares`` updates carries ``noise_multiplier``, which is what the
    history records (docs/privacy.md, "Distributed noise"). 1: local noise, all of it here."""

    @property
    def noise_drawn(self) -> float:
        """The noise multiplier this site's optimizer draws with."""
        return self.noise_multiplier / math.sqrt(self.noise_shares)


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
    *,
    generator: torch.Generator | None = None,
) -> PrivateTrainOutcome:
    """Run ``plan.local_steps`` DP-SGD steps on (x, y), updating ``model`` in place.

    Batches are Poisson-sampled (each row joins a batch with probability
    ``privacy.sample_rate``), as DP-SGD's analysis requires; a batch may be empty, and an
    empty batch is still a step that adds noise and is accounted. FedProx's proximal
    pull towards the starting weights is applied after each noisy step: it does not
    touch the data, so it is post-processing and costs no privacy.

    Every random draw (the Poisson masks and the Gaussian noise) comes from
    ``generator``; None means a fresh one seeded from the OS CSPRNG
    (:mod:`countyfl.privacy.randomness`). Torch's global generator is never drawn from.
    The noise is drawn as Opacus's ``secure_mode`` draws it (2n Gaussian samples, Holohan
    and Braghin 2021), against floating-point attacks on the noise's low bits.
    """
    if generator is None:
        generator = secret_generator()
    rows = TensorRows(x, y)
    sample_rate = (
        privacy.sample_rate
        if privacy.sample_rate is not None
        else poisson_sample_rate(len(rows), plan.batch_size)
    )
    expected_batch_size = (
        privacy.expected_batch_size
        if privacy.expected_batch_size is not None
        else sample_rate * len(rows)
    )
    if privacy.noise_shares < 1:
        raise ConfigError(f"noise shares {privacy.noise_shares} must be >= 1")
    if not 0 < sample_rate <= 1 or expected_batch_size <= 0:
        raise ConfigError(
            f"DP-SGD needs a sample rate in (0, 1] and a positive expected batch size; got "
            f"{sample_rate} and {expected_batch_size}"
        )
    with warnings.catch_warnings():
        # Opacus warns that its secure RNG is off: countyfl passes its own generator,
        # seeded from the OS CSPRNG (torchcsprng, which secure_mode needs, predates torch 2).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=privacy.accountant.value)
    anchor = [p.detach().clone() for p in model.parameters()] if plan.proximal_mu > 0 else []
    made = engine.make_private(
        module=model,
        optimizer=make_optimizer(model, plan),
        criterion=nn.BCEWithLogitsLoss(),
        # Opacus's own Poisson loader would draw from torch's global generator and at
        # 1 / len(loader): countyfl samples below, at the planned rate, from ``generator``.
        data_loader=DataLoader(rows, batch_size=plan.batch_size),
        noise_multiplier=privacy.noise_drawn,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=False,
        noise_generator=generator,
        grad_sample_mode=privacy.grad_sample_mode.value,
    )
    if privacy.grad_sample_mode is GradSampleMode.GHOST:
        # Ghost clipping also wraps the loss: it runs the second backward pass itself.
        private_model, optimizer, criterion, _ = made
    else:
        private_model, optimizer, _ = made
        criterion = nn.BCEWithLogitsLoss()
    # The noisy sum is divided by a batch size fixed before the data is seen, and the
    # noise drawn the floating-point-safe way, from the same secret generator.
    optimizer.expected_batch_size = expected_batch_size
    optimizer.secure_mode = True
    private_model.train()
    steps, total, counted = 0, 0.0, 0
    features_all, labels_all = rows.x, rows.y
    # Index the tensors directly: the DataLoader's fetch-and-collate machinery cost more
    # per step than the clipping it feeds.
    sampler = UniformWithReplacementSampler(
        num_samples=len(rows), sample_rate=sample_rate, generator=generator
    )
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
                    proximal_pull(model, anchor, plan.learning_rate * plan.proximal_mu)
                steps += 1
                if steps >= plan.local_steps:
                    break
    _detach_hooks(private_model)
    return PrivateTrainOutcome(
        mean_loss=total / counted if counted else float("nan"),
        steps=steps,
        sample_rate=float(sample_rate),
        # What ran, as Opacus's accountant would have recorded it step by step.
        history_after=merge_history(
            [*history_before, (privacy.noise_multiplier, sample_rate, steps)]
        ),
    )


@torch.no_grad()
def proximal_pull(model: nn.Module, anchor: Sequence[torch.Tensor], strength: float) -> None:
    """FedProx's proximal step towards the round's starting weights, in place.

    ``w <- w - strength * (w - anchor)`` with strength = learning rate x mu: the gradient
    step of (mu / 2) ||w - anchor||^2 (Li et al., MLSys 2020). It reads only the current
    weights and the anchor, never a row, so under DP-SGD it is post-processing of the
    noisy steps and costs no privacy.
    """
    for parameter, start in zip(model.parameters(), anchor, strict=True):
        parameter.sub_(strength * (parameter - start))


def _detach_hooks(private_model: nn.Module) -> None:
    remove = getattr(private_model, "_close", None)
    if callable(remove):
        remove()
