"""DP-SGD step time over non-private step time, per model, batch size and Opacus mode.

Both sides train the same model on the same rows in one process, interleaved, so the
printed ratios are measured side by side. The non-private side is countyfl's own
training loop (`clients.training.train`); the private side is `privacy.dp.train_private`
(Opacus PrivacyEngine, Poisson sampling, clipping and noise), including everything it
does per round (engine set-up, accountant restore), amortised over the steps.

    python benchmarks/dp_overhead.py [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from countyfl import models
from countyfl.privacy.dp import PrivacyPlan, train_private
from countyfl.privacy.modes import AccountantName, GradSampleMode
from countyfl.training.local import train
from countyfl.training.plan import OptimizerName, TrainingPlan

TARGET_AT_64 = 2.0


def _time(fn: object, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _plain(name: str, features: int, x: np.ndarray, y: np.ndarray, plan: TrainingPlan) -> None:
    model = models.build(name, features)
    train(model, x, y, plan, torch.Generator().manual_seed(0))


def _private(
    name: str,
    features: int,
    x: np.ndarray,
    y: np.ndarray,
    plan: TrainingPlan,
    mode: GradSampleMode,
) -> None:
    model = models.build(name, features)
    train_private(model, x, y, plan, PrivacyPlan(1.0, 1.0, AccountantName.RDP, mode), [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    cases = [("diagnosis-logreg", 13), ("diagnosis-mlp", 13), ("risk-logreg", 14)]
    print(
        f"{args.steps} steps per measurement, median of {args.repeats}, {args.rows} rows, 1 thread"
    )
    print(
        f"{'model':18s} {'batch':>5s} {'mode':>10s} {'plain ms/step':>14s} "
        f"{'DP ms/step':>11s} {'ratio':>7s}"
    )
    best_at_64: dict[str, tuple[float, str]] = {}
    for name, features in cases:
        x = rng.normal(size=(args.rows, features)).astype(np.float32)
        y = (rng.random(args.rows) < 0.4).astype(np.float32)
        for batch in (4, 64):
            plan = TrainingPlan(args.steps, batch, 0.05, OptimizerName.SGD, 0.9)

            plain = functools.partial(_plain, name, features, x, y, plan)
            for mode in GradSampleMode:
                private = functools.partial(_private, name, features, x, y, plan, mode)

                try:
                    private()  # warm-up, and find out whether the mode works here
                except Exception as error:  # report any mode that fails here, and go on
                    print(
                        f"{name:18s} {batch:5d} {mode.value:>10s}   fails: "
                        f"{type(error).__name__}: {str(error)[:60]}"
                    )
                    continue
                plain()
                # Interleave the two sides so that machine noise hits both alike.
                plain_s, private_s = [], []
                for _ in range(args.repeats):
                    plain_s.append(_time(plain, 1))
                    private_s.append(_time(private, 1))
                p = statistics.median(plain_s) / args.steps * 1e3
                d = statistics.median(private_s) / args.steps * 1e3
                ratio = d / p
                print(
                    f"{name:18s} {batch:5d} {mode.value:>10s} {p:14.3f} {d:11.3f} {ratio:7.2f}",
                    flush=True,
                )
                if batch == 64 and (name not in best_at_64 or ratio < best_at_64[name][0]):
                    best_at_64[name] = (ratio, mode.value)
    print(f"\nbest mode at batch 64 (target ratio <= {TARGET_AT_64}):")
    for name, (ratio, mode) in best_at_64.items():
        verdict = "met" if ratio <= TARGET_AT_64 else "NOT met"
        print(f"  {name:18s} {mode:>10s} {ratio:6.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
