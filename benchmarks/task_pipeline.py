"""The task-file pipeline against the hand-written loaders it replaced, side by side.

Prints the median of several loads of each built-in scenario through its task file
(``countyfl.scenarios``) and through ``countyfl.data.fed_heart_disease`` /
``countyfl.data.framingham``, and their ratio (same process, same data, warm caches).

    python benchmarks/task_pipeline.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from countyfl import scenarios
from countyfl.data import fed_heart_disease, framingham


def _median_seconds(load: Callable[[], object], repeats: int) -> float:
    load()  # warm imports and file caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        load()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pairs = {
        "fed-heart-disease": (
            lambda: scenarios.get("fed-heart-disease").loader(None, 2026),
            lambda: fed_heart_disease.load(),
        ),
        "framingham-county": (
            lambda: scenarios.get("framingham-county").loader(None, 2026),
            lambda: framingham.load(partition_seed=2026),
        ),
    }
    for name, (task_file, hand_written) in pairs.items():
        ours = _median_seconds(task_file, args.repeats)
        theirs = _median_seconds(hand_written, args.repeats)
        print(
            f"{name}: task file {ours * 1000:.0f} ms, hand-written {theirs * 1000:.0f} ms, "
            f"ratio {ours / theirs:.2f}"
        )


if __name__ == "__main__":
    main()
