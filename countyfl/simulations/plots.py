"""PNG plots of a simulation report (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


def plot_rounds(
    path: Path,
    rounds: list[int],
    per_institution: dict[str, list[list[float]]],
    metric: str,
    title: str,
) -> None:
    """Each institution's test metric per round: mean over seeds, band = min..max over seeds.

    ``per_institution`` maps an institution name to one list per seed of values per round.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    stacked_all = []
    for name, series in per_institution.items():
        values = np.asarray(series, dtype=float)  # seeds x rounds
        stacked_all.append(values)
        mean = np.nanmean(values, axis=0)
        (line,) = ax.plot(rounds, mean, marker="o", markersize=3, label=name)
        if values.shape[0] > 1:
            ax.fill_between(
                rounds,
                np.nanmin(values, axis=0),
                np.nanmax(values, axis=0),
                color=line.get_color(),
                alpha=0.15,
            )
    overall = np.nanmean(np.stack(stacked_all), axis=0)  # institutions averaged, per seed
    ax.plot(
        rounds,
        np.nanmean(overall, axis=0),
        color="black",
        linewidth=2.5,
        label="mean of institutions",
    )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_methods(
    path: Path,
    summary: dict[str, dict[str, Any]],
    metric: str,
    reference: Mapping[str, float],
    reference_label: str,
    title: str,
) -> None:
    """Mean-of-institutions metric per method (error bar = std over seeds), references beside."""
    methods = list(summary)
    extra = [m for m in reference if m not in summary]
    labels = methods + extra
    ours = [summary[m]["mean"] if m in summary else np.nan for m in labels]
    spread = [summary[m]["std"] if m in summary else 0.0 for m in labels]
    theirs = [reference.get(m, np.nan) for m in labels]
    x = np.arange(len(labels))
    width = 0.4 if reference else 0.7
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(labels)), 4.5))
    ax.bar(
        x - (width / 2 if reference else 0),
        ours,
        width,
        yerr=spread,
        capsize=3,
        label="countyfl (this run)",
        color="#2a6f97",
    )
    if reference:
        ax.bar(
            x + width / 2,
            theirs,
            width,
            label=reference_label,
            color="#bbbbbb",
            edgecolor="#555555",
        )
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric}, mean of institution tests")
    finite_values = [v for v in ours + theirs if np.isfinite(v)]
    if finite_values:
        ax.set_ylim(max(0.0, min(finite_values) - 0.1), min(1.0, max(finite_values) + 0.05))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_calibration(
    path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, bins: int = 10
) -> None:
    """Reliability diagram: observed event rate against mean predicted risk, per method."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for name, (probabilities, labels) in curves.items():
        index = np.clip(np.digitize(probabilities, edges[1:-1], right=True), 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            mask = index == b
            if mask.sum() >= 5:
                xs.append(probabilities[mask].mean())
                ys.append(labels[mask].mean())
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("mean predicted 10-year risk")
    ax.set_ylabel("observed event rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_privacy(
    path: Path,
    rounds: list[int],
    per_institution: dict[str, list[list[float]]],
    budget: float,
    target: float,
) -> None:
    """Each institution's spent epsilon after every round (mean over seeds), budget drawn."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, series in per_institution.items():
        values = np.asarray(series, dtype=float)
        ax.plot(rounds, np.nanmean(values, axis=0), marker="o", markersize=3, label=name)
    ax.axhline(target, color="#2a6f97", linestyle=":", label=f"target per run ({target:g})")
    ax.axhline(budget, color="#b5179e", linestyle="--", label=f"institution budget ({budget:g})")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("epsilon spent (all rounds and runs)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("Privacy spent per institution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_utility_privacy(
    path: Path,
    accuracy: dict[str, dict[str, float]],
    reference: dict[str, float],
    reference_label: str,
) -> None:
    """Accuracy (mean ± std over seeds) at each epsilon, no-DP drawn as a line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = sorted((float(k), v) for k, v in accuracy.items() if k != "no DP")
    xs = [p[0] for p in points]
    ax.errorbar(
        xs,
        [p[1]["mean"] for p in points],
        yerr=[p[1]["std"] for p in points],
        marker="o",
        capsize=3,
        label="countyfl, DP-FedAvg",
    )
    if "no DP" in accuracy:
        ax.axhline(accuracy["no DP"]["mean"], color="grey", linestyle="--", label="no DP")
    for key, value in reference.items():
        ax.scatter(
            [float(key)],
            [value],
            marker="x",
            color="#b5179e",
            s=60,
            zorder=3,
            label=reference_label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("epsilon per run (delta 1e-3), every DP-SGD step accounted")
    ax.set_ylabel("accuracy, mean of institution tests")
    ax.set_title("Utility against privacy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
