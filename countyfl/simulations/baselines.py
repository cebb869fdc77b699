"""Baselines trained on the same splits: local-only models and pooled (centralised) training."""

from __future__ import annotations

import numpy as np
import torch

from countyfl import models
from countyfl.data import FederatedDataset
from countyfl.data.federated import FloatArray
from countyfl.training.local import evaluate, train
from countyfl.training.plan import TrainingPlan

MethodMetrics = dict[str, dict[str, float]]  # institution id (or "pooled-test") -> metrics


def evaluate_everywhere(model: torch.nn.Module, dataset: FederatedDataset) -> MethodMetrics:
    """Metrics on every institution's test split and on all test rows pooled."""
    result = {
        institution.institution_id: evaluate(model, institution.x_test, institution.y_test)
        for institution in dataset.institutions
    }
    _, _, x_test, y_test = dataset.pooled()
    result[POOLED_TEST] = evaluate(model, x_test, y_test)
    return result


POOLED_TEST = "pooled-test"


def _trained(
    model_name: str, x: FloatArray, y: FloatArray, plan: TrainingPlan, seed: int
) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.build(model_name, x.shape[1])
    train(model, x, y, plan, torch.Generator().manual_seed(seed))
    return model


def train_baselines(
    dataset: FederatedDataset, model_name: str, plan: TrainingPlan, rounds: int, seed: int
) -> dict[str, torch.nn.Module]:
    """Train local-only and pooled models with the federation's optimiser settings.

    Local-only models take as many steps as one institution takes over the whole
    federation (rounds x local steps). The pooled model sees as many examples as all
    institutions together, in the same number of steps with K times the batch (K
    institutions): FedAvg with one local step is exactly that large-batch SGD, so this is
    the centralised counterpart of the federation, not a weaker small-batch run.
    """
    local_plan = TrainingPlan(**{**plan.__dict__, "local_steps": rounds * plan.local_steps})
    results: dict[str, torch.nn.Module] = {}
    for institution in dataset.institutions:
        results[f"local-{institution.institution_id}"] = _trained(
            model_name, institution.x_train, institution.y_train, local_plan, seed
        )
    x_train, y_train, _, _ = dataset.pooled()
    pooled_plan = TrainingPlan(
        **{
            **plan.__dict__,
            "local_steps": rounds * plan.local_steps,
            "batch_size": plan.batch_size * len(dataset.institutions),
        }
    )
    results["pooled"] = _trained(model_name, x_train, y_train, pooled_plan, seed)
    return results


def mean_of_institutions(metrics: MethodMetrics, institution_ids: list[str]) -> dict[str, float]:
    """FLamby's headline: each metric averaged over the institutions' tests (NaNs skipped)."""
    names = metrics[institution_ids[0]].keys()
    return {
        name: float(np.nanmean([metrics[i][name] for i in institution_ids]))
        if any(np.isfinite(metrics[i][name]) for i in institution_ids)
        else float("nan")
        for name in names
    }
