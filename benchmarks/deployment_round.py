"""Round time in deployment (SuperLink + 4 SuperNodes over TLS) over simulation, same task.

Both engines run Fed-Heart-Disease with DP and CKKS for 1 and for 3 rounds; the time of a
round is (T3 - T1) / 2, so start-up (Ray, FAB upload, process start) cancels out. The runs
are interleaved in one process on this machine and printed side by side with their ratio.

Run: .venv/bin/python benchmarks/deployment_round.py [--rounds-high 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from countyfl.deployment.local_county import LocalCounty, countyfl_command

TASK = {
    "scenario": "fed-heart-disease",
    "local-steps": 5,
    "dp": True,
    "target-epsilon": 1.0,
    "encryption": "ckks",
    "seed": 42,
}


def _simulate(rounds: int, output: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        countyfl_command(
            "simulate",
            "fed-heart-disease",
            "--rounds",
            str(rounds),
            "--seeds",
            "42",
            "--local-steps",
            "5",
            "--encryption",
            "ckks",
            "--no-baselines",
            "--no-register",
            "-o",
            str(output),
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"simulation failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds-high", type=int, default=3)
    args = parser.parse_args()
    low, high = 1, args.rounds_high
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["COUNTYFL_HOME"] = str(root / "home")
        county = LocalCounty(root / "county")
        county.prepare([{**TASK, "num-server-rounds": r} for r in (low, high)])
        county.start()
        try:
            times: dict[tuple[str, int], float] = {}
            for rounds in (low, high):  # interleaved: simulation, deployment, ...
                times[("simulation", rounds)] = _simulate(rounds, root / f"sim-{rounds}")
                started = time.perf_counter()
                done = county.run({**TASK, "num-server-rounds": rounds}, root / f"dep-{rounds}")
                times[("deployment", rounds)] = time.perf_counter() - started
                if done.returncode != 0:
                    sys.exit(f"deployment run failed: {done.stdout}{done.stderr}")
        finally:
            county.stop()
    per_round = {
        engine: (times[(engine, high)] - times[(engine, low)]) / (high - low)
        for engine in ("simulation", "deployment")
    }
    print(f"{'engine':<12}{'1 round (s)':>14}{f'{high} rounds (s)':>16}{'per round (s)':>16}")
    for engine in ("simulation", "deployment"):
        print(
            f"{engine:<12}{times[(engine, low)]:>14.1f}{times[(engine, high)]:>16.1f}"
            f"{per_round[engine]:>16.1f}"
        )
    ratio = per_round["deployment"] / per_round["simulation"]
    print(f"round time, deployment / simulation: {ratio:.2f}x")


if __name__ == "__main__":
    main()
