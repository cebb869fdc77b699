"""Classification and calibration metrics computed from predicted probabilities."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import brier_score_loss, roc_auc_score

from countyfl import protocol

ArrayLike = npt.NDArray[np.floating]


def expected_calibration_error(
    probabilities: ArrayLike, labels: ArrayLike, bins: int = 10
) -> float:
    """ECE with equal-width probability bins (Naeini et al., AAAI 2015).

    The mean over bins of |observed rate - mean predicted probability|, weighted by
    the share of rows in each bin.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if probabilities.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probabilities, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(labels[mask].mean() - probabilities[mask].mean())
    return float(total)


def classification_metrics(probabilities: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Accuracy at 0.5, AUC (NaN when one class is absent), Brier score and ECE."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    both_classes = labels.size > 0 and 0 < labels.sum() < labels.size
    return {
        protocol.ACCURACY: float(((probabilities >= 0.5) == (labels >= 0.5)).mean())
        if labels.size
        else float("nan"),
        protocol.AUC: float(roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        protocol.BRIER: float(brier_score_loss(labels, probabilities, pos_label=1))
        if labels.size
        else float("nan"),
        protocol.ECE: expected_calibration_error(probabilities, labels),
    }
