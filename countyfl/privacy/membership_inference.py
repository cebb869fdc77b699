"""Empirical privacy audit: a loss-threshold membership-inference attack.

Yeom et al., "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting",
CSF 2018: an attacker who sees a model's loss on a record guesses "member of the training
set" when the loss is low. The attack's AUC over an institution's training rows (members)
against its held-out rows (non-members) is 0.5 when the model leaks nothing this attack
can see, and grows as the model memorises its training rows. Differential privacy bounds
it: with epsilon, no attack's true-positive rate exceeds e^epsilon x false-positive rate
+ delta.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from countyfl.data.federated import FloatArray


@torch.no_grad()
def per_example_loss(model: nn.Module, x: FloatArray, y: FloatArray) -> np.ndarray:
    """Binary cross-entropy of every row under the model."""
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x)))
    loss = nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(np.ascontiguousarray(y)), reduction="none"
    )
    return loss.numpy().astype(np.float64)


def membership_inference_auc(
    model: nn.Module,
    x_members: FloatArray,
    y_members: FloatArray,
    x_non_members: FloatArray,
    y_non_members: FloatArray,
) -> float:
    """AUC of the loss-threshold attack (score = -loss); NaN if either side is empty."""
    if len(x_members) == 0 or len(x_non_members) == 0:
        return float("nan")
    scores = np.concatenate(
        [
            -per_example_loss(model, x_members, y_members),
            -per_example_loss(model, x_non_members, y_non_members),
        ]
    )
    truth = np.concatenate([np.ones(len(x_members)), np.zeros(len(x_non_members))])
    return float(roc_auc_score(truth, scores))
