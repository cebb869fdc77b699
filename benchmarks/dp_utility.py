"""Utility against privacy on Fed-Heart-Disease, and the membership-inference audit.

Runs the federation (Flower's Simulation Engine, the scenario defaults) at target epsilon
0.5, 1, 3 and 8 per run (delta 1e-3, accounted over every DP-SGD step that ran, each
institution calibrating its own noise) and without DP, over five seeds, and prints the
mean of the four hospital test accuracies beside FLamby's DP-FedAvg figure. Then trains a
model that overfits (the MLP, many local steps) with and without DP and prints the
loss-threshold membership-inference AUC of both. Writes utility-privacy.png.

Every run's target epsilon covers everything it releases (the noisy example count and
DP-SGD, composed); for each DP run the script prints how each institution's epsilon
splits between the two.

    python benchmarks/dp_utility.py [--seeds 42-46] [--output runs/benchmarks/dp-utility]
        [--epsilons 0.5,1,3,8] [--encryption ckks] [--skip-audit]

Takes about 20 minutes on a 2-core machine (``--epsilons 1 --skip-audit``: 5).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import countyfl  # noqa: F401  (telemetry off)
from countyfl.cli.common import parse_seeds
from countyfl.simulations import plots
from countyfl.simulations.report import summarize, write_report
from countyfl.simulations.runner import SimulationRequest, run_simulation_request

EPSILONS = (0.5, 1.0, 3.0, 8.0)
TARGET_AT_1 = 0.74
FLAMBY_DP_AT_1 = 0.70  # FLamby's DP-FedAvg example, nominal epsilon 1 (under-counted steps)
OVERFIT = {"model": "diagnosis-mlp", "local-steps": 50, "learning-rate": 0.05}


def _run(label: str, folder: Path, seeds: list[int], overrides: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result = run_simulation_request(
        SimulationRequest("fed-heart-disease", folder, seeds, overrides, baselines=False)
    )
    write_report(result)
    summary = summarize(result)
    accuracy = summary["methods"]["federated"]["summary"]["mean-of-institutions"]["accuracy"]
    attack = summary["privacy"]["membership-inference-auc-mean"]
    print(
        f"{label:28s} accuracy {accuracy['mean']:.3f} ± {accuracy['std']:.3f}   "
        f"membership-inference AUC {attack['mean']:.3f} ± {attack['std']:.3f}   "
        f"[{time.perf_counter() - started:.0f} s, {folder}/report.md]",
        flush=True,
    )
    splits = {
        institution: entry["budget-split"]
        for institution, entry in summary["privacy"]["per-institution"].items()
        if entry["budget-split"]
    }
    for institution, split in splits.items():
        print(
            f"    {institution:16s} epsilon of the noisy count {split['noisy-count']:.3f}, "
            f"of training {split['training']:.3f}, composed (the run) {split['run']:.3f}",
            flush=True,
        )
    return {"accuracy": accuracy, "membership-inference-auc": attack, "budget-split": splits}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42-46")
    parser.add_argument("--output", type=Path, default=Path("runs/benchmarks/dp-utility"))
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    parser.add_argument("--encryption", choices=("none", "ckks"), default="none")
    parser.add_argument(
        "--skip-audit", action="store_true", help="skip no-DP and the overfitting MLP runs"
    )
    args = parser.parse_args()
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    seeds = parse_seeds(args.seeds)
    results: dict[str, Any] = {}
    common = {"encryption": args.encryption}
    for epsilon in (float(e) for e in args.epsilons.split(",")):
        results[f"{epsilon:g}"] = _run(
            f"epsilon {epsilon:g}",
            args.output / f"epsilon-{epsilon:g}",
            seeds,
            {**common, "target-epsilon": epsilon},
        )
    if args.skip_audit:
        for label, result in results.items():
            print(f"epsilon {label}: accuracy {result['accuracy']['mean']:.3f}")
        if "1" in results:
            at_1 = results["1"]["accuracy"]["mean"]
            print(
                f"target >= {TARGET_AT_1} at epsilon 1: "
                f"{'met' if at_1 >= TARGET_AT_1 else 'NOT met'}"
            )
        return 0
    results["no DP"] = _run("no DP", args.output / "no-dp", seeds, {**common, "dp": False})
    overfit = {
        "no DP": _run(
            "overfitting MLP, no DP", args.output / "mlp-no-dp", seeds, {**OVERFIT, "dp": False}
        ),
        "epsilon 1": _run(
            "overfitting MLP, epsilon 1",
            args.output / "mlp-epsilon-1",
            seeds,
            {**OVERFIT, "target-epsilon": 1.0},
        ),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "utility-privacy.json").write_text(
        json.dumps({"logreg": results, "overfitting-mlp": overfit}, indent=1)
    )
    plots.plot_utility_privacy(
        args.output / "utility-privacy.png",
        {k: v["accuracy"] for k, v in results.items()},
        reference={"1": FLAMBY_DP_AT_1},
        reference_label="FLamby DP-FedAvg (nominal epsilon 1)",
    )
    at_1 = results["1"]["accuracy"]["mean"]
    print(
        f"\nFed-Heart-Disease, seeds {seeds}, delta 1e-3: accuracy at epsilon 1 = {at_1:.3f} "
        f"(no DP {results['no DP']['accuracy']['mean']:.3f}; FLamby DP-FedAvg ~{FLAMBY_DP_AT_1} "
        f"at a nominal epsilon 1); target >= {TARGET_AT_1}: "
        f"{'met' if at_1 >= TARGET_AT_1 else 'NOT met'}"
    )
    print(
        f"membership inference on the overfitting MLP: AUC "
        f"{overfit['no DP']['membership-inference-auc']['mean']:.3f} without DP, "
        f"{overfit['epsilon 1']['membership-inference-auc']['mean']:.3f} at epsilon 1"
    )
    print(f"plot: {args.output / 'utility-privacy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
