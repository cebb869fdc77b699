"""Round time in deployment (SuperLink + 4 SuperNodes over TLS) over simulation, same task.

Both engines run Fed-Heart-Disease with DP and CKKS for 1 and for 3 rounds; the time of a
round is (T3 - T1) / 2, so start-up (Ray, FAB upload, process start) cancels out. The runs
are interleaved in one process on this machine and printed side by side with their ratio.
The nodes answer from warm processes (``countyfl node start``); ``--cold`` also runs a
county whose nodes start a fresh Flower process per message (before issue 18).

First it prints the start-up cost of one message at a node: a fresh interpreter importing
what a ClientApp task imports (Flower's ``flwr-clientapp``, before), against a fork of the
node's template process that has imported it already (after).

Run: .venv/bin/python benchmarks/deployment_round.py [--rounds-high 3] [--cold]
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
from countyfl.federation.warm import TEMPLATE_IMPORTS, Template

REPEATS = 5

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


def _round_seconds(folder: Path) -> float | None:
    """A round's time inside one run: from the end of round 1 to the end of the last, per
    round, by the ServerApp's own event timestamps (events.jsonl), start-up excluded."""
    from countyfl.runs import EventKind, EventReader

    ends: dict[int, float] = {}
    for path in folder.rglob("events.jsonl"):
        for event in EventReader(path).read_new():
            if event.kind is EventKind.ROUND_END and event.round is not None:
                ends[event.round] = event.at.timestamp()
    if len(ends) < 2:
        return None
    first, last = min(ends), max(ends)
    return (ends[last] - ends[first]) / (last - first)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _start_up(root: Path) -> tuple[float, float]:
    """Seconds until a message's process can work: fresh interpreter, fork of the template."""
    imports = "import " + ", ".join(TEMPLATE_IMPORTS)
    cold = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", imports], check=True)
        cold.append(time.perf_counter() - started)
    template = Template(None, imports=TEMPLATE_IMPORTS)
    try:
        template.wait_ready()
        warm = []
        for attempt in range(REPEATS):
            mark = root / f"forked-{attempt}"
            started = time.perf_counter()
            template.fork("os:mkdir", {"path": str(mark)})  # the child's first act
            while not mark.exists():
                time.sleep(0.001)
            warm.append(time.perf_counter() - started)
    finally:
        template.close()
    return _median(cold), _median(warm)


def _county_rounds(
    root: Path, name: str, low: int, high: int, warm: bool, times: dict[tuple[str, int], float]
) -> None:
    county = LocalCounty(root / name, warm=warm)
    county.prepare([{**TASK, "num-server-rounds": r} for r in (low, high)])
    county.start()
    try:
        for rounds in (low, high):  # interleaved: simulation, deployment, ...
            if ("simulation", rounds) not in times:
                times[("simulation", rounds)] = _simulate(rounds, root / f"sim-{rounds}")
            started = time.perf_counter()
            done = county.run({**TASK, "num-server-rounds": rounds}, root / f"{name}-{rounds}")
            times[(name, rounds)] = time.perf_counter() - started
            if done.returncode != 0:
                sys.exit(f"{name} run failed: {done.stdout}{done.stderr}")
    finally:
        county.stop()


def prefix(engine: str) -> str:
    """The folder prefix of an engine's runs (``sim-3``, ``deployment-3``)."""
    return "sim" if engine == "simulation" else engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds-high", type=int, default=3)
    parser.add_argument(
        "--cold", action="store_true", help="also a county of fresh processes per message"
    )
    args = parser.parse_args()
    low, high = 1, args.rounds_high
    engines = ["simulation", "deployment"] + (["deployment-cold"] if args.cold else [])
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["COUNTYFL_HOME"] = str(root / "home")
        cold, warm = _start_up(root)
        print(f"start-up of one message at a node (median of {REPEATS}):")
        print(f"  fresh process importing the ClientApp's libraries (before): {cold:.2f} s")
        print(f"  fork of the node's warm template (after):                   {warm:.3f} s")
        print(f"  before / after: {cold / warm:.0f}x")
        times: dict[tuple[str, int], float] = {}
        _county_rounds(root, "deployment", low, high, True, times)
        if args.cold:
            _county_rounds(root, "deployment-cold", low, high, False, times)
        in_run = {engine: _round_seconds(root / f"{prefix(engine)}-{high}") for engine in engines}
    per_round = {
        engine: (times[(engine, high)] - times[(engine, low)]) / (high - low) for engine in engines
    }
    print(f"{'engine':<16}{'1 round (s)':>14}{f'{high} rounds (s)':>16}{'per round (s)':>16}")
    for engine in engines:
        print(
            f"{engine:<16}{times[(engine, low)]:>14.1f}{times[(engine, high)]:>16.1f}"
            f"{per_round[engine]:>16.1f}"
        )
    # The same round timed inside the run, by the ServerApp's event timestamps (rounds 2..n):
    # immune to the spread of start-up between runs.
    timed = {engine: value for engine, value in in_run.items() if value is not None}
    if "simulation" in timed:
        print("round time inside the run (ServerApp events, round 1 to the last):")
        for engine, value in timed.items():
            print(f"  {engine:<16}{value:>8.2f} s")
        for engine in engines[1:]:
            if engine in timed and timed["simulation"] > 0:
                ratio = timed[engine] / timed["simulation"]
                print(f"  round time inside the run, {engine} / simulation: {ratio:.2f}x")
    if per_round["simulation"] <= 0.1:
        # Ray's start-up varies by seconds between runs: with few rounds it hides a round.
        print(
            "the simulation's round time is below the start-up noise of its runs "
            f"({per_round['simulation']:.1f} s): rerun with more rounds (--rounds-high 20)"
        )
        return
    for engine in engines[1:]:
        ratio = per_round[engine] / per_round["simulation"]
        print(f"round time, {engine} / simulation: {ratio:.2f}x")


if __name__ == "__main__":
    main()
