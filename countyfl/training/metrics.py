"""Classification and calibration metrics computed from predicted probabilities."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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


def area_under_roc(probabilities: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties (Hanley and
    McNeil, Radiology 1982): the probability that a random positive scores above a random
    negative, ties counting one half; scikit-learn's ``roc_auc_score`` to rounding (a
    test compares them), without its input checks, which cost 10-15 ms per call, i.e.
    per institution and round.
    """
    positive = labels >= 0.5
    count_positive = int(positive.sum())
    count_negative = labels.size - count_positive
    order = np.argsort(probabilities, kind="mergesort")
    ranks = np.empty(probabilities.size, dtype=np.float64)
    ranks[order] = np.arange(1, probabilities.size + 1)
    # Average ranks over ties.
    sorted_values = probabilities[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], probabilities.size]
    for start, end in zip(starts, ends, strict=True):
        if end - start > 1:
            ranks[order[start:end]] = (start + 1 + end) / 2
    rank_sum = ranks[positive].sum()
    return float(
        (rank_sum - count_positive * (count_positive + 1) / 2) / (count_positive * count_negative)
    )


def classification_metrics(probabilities: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Accuracy at 0.5, AUC (NaN when one class is absent), Brier score and ECE."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    both_classes = labels.size > 0 and 0 < labels.sum() < labels.size
    return {
        protocol.ACCURACY: float(((probabilities >= 0.5) == (labels >= 0.5)).mean())
        if labels.size
        else float("nan"),
        protocol.AUC: area_under_roc(probabilities, labels) if both_classes else float("nan"),
        protocol.BRIER: float(np.mean((probabilities - labels) ** 2))
        if labels.size
        else float("nan"),
        protocol.ECE: expected_calibration_error(probabilities, labels),
    }
