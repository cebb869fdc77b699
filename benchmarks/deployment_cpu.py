"""Where a deployment round's CPU goes: CPU-seconds per round of each kind of process.

A county of four Fed-Heart-Disease sites on this machine (SuperLink and SuperNodes over
TLS, warm nodes, DP + CKKS, as ``benchmarks/deployment_round.py``) runs the same task for
``--low`` and ``--high`` rounds, after a first run that is not counted. Each process's
CPU time (its own and its reaped children's, from ``/proc/PID/stat``) is read before and
after each run; the difference between the
two runs, divided by the extra rounds, is a round's CPU by kind of process (start-up
cancels out). On a 2-core machine where every process of the county shares the cores, a
round cannot be shorter than its CPU-seconds over 2.

One thing does not cancel: each run's first training task at each site calibrates the
run's noise (seconds of CPU, more for a run of more rounds), so the "tasks" row can move
by whole CPU-seconds between runs (most of all under a profiler: from 2.0 to 13.7). For
per-round effects, read the SuperLink's, the SuperNodes' and the ServerApp's rows, and
``deployment_round.py``'s round time inside the run (which excludes round 1).

Run: .venv/bin/python benchmarks/deployment_cpu.py [--low 1] [--high 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from deployment_round import TASK  # the same task (benchmarks/ is this script's folder)

from countyfl.deployment.local_county import LocalCounty

KINDS = (
    ("flower-superlink", "SuperLink"),
    ("flower-superexec", "ServerApp (and the SuperExec running it)"),
    ("flwr-serverapp", "ServerApp (and the SuperExec running it)"),
    ("flower-supernode", "SuperNodes"),
    ("warm template", "tasks (forks of the templates)"),
    ("warm superexec", "nodes' SuperExecs"),
    ("node start", "node commands (relays)"),
)
TICKS = os.sysconf("SC_CLK_TCK")


def _kind(command: str) -> str:
    for needle, kind in KINDS:
        if needle in command:
            return kind
    return "other"


def _cpu(roots: set[int]) -> Counter[str]:
    """CPU-seconds (own + reaped children) of ``roots`` and their descendants, by kind,
    and of the whole machine (``/proc/stat``: every process, the county's and others)."""
    processes: dict[int, tuple[int, str, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = sum(int(x) for x in fields[11:15]) / TICKS
        processes[int(name)] = (int(fields[1]), command, seconds)
    totals: Counter[str] = Counter()
    for pid, (_, command, seconds) in processes.items():
        ancestor = pid
        while ancestor not in roots and ancestor in processes and ancestor > 1:
            ancestor = processes[ancestor][0]
        if ancestor in roots:
            totals[_kind(command.replace("countyfl.federation.warm ", "warm "))] += seconds
    busy = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    totals["whole machine"] = sum(int(x) for i, x in enumerate(busy) if i not in (3, 4)) / TICKS
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--low", type=int, default=1)
    parser.add_argument("--high", type=int, default=6)
    args = parser.parse_args()
    if not Path("/proc/self/stat").exists():
        sys.exit("this benchmark reads /proc (Linux)")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["COUNTYFL_HOME"] = str(root / "home")
        county = LocalCounty(root / "county")
        county.prepare([{**TASK, "num-server-rounds": r} for r in (args.low, args.high)])
        county.start()
        roots = {process.pid for process in county.processes}
        used: dict[int, Counter[str]] = {}
        walls: dict[int, float] = {}
        try:
            # A first run that is not counted: the nodes' templates finish their imports
            # and each site installs the FAB, which the counted runs then share.
            county.run({**TASK, "num-server-rounds": args.low}, root / "warm-up")
            for rounds in (args.low, args.high):
                before, run_before = _cpu(roots), os.times()
                started = time.perf_counter()
                done = county.run({**TASK, "num-server-rounds": rounds}, root / f"run-{rounds}")
                walls[rounds] = time.perf_counter() - started
                time.sleep(3)  # finished tasks and the ServerApp are reaped: in their parents'
                after, run_after = _cpu(roots), os.times()
                if done.returncode != 0:
                    sys.exit(f"the run failed: {done.stdout}{done.stderr}")
                used[rounds] = Counter({k: after[k] - before[k] for k in after})
                # countyfl run (the operator's command) and what it starts
                used[rounds]["countyfl run (operator)"] = (
                    run_after.children_user
                    + run_after.children_system
                    - run_before.children_user
                    - run_before.children_system
                )
        finally:
            county.stop()
    extra = args.high - args.low
    print(f"CPU-seconds per round ({args.low} and {args.high} rounds, the difference / {extra}):")
    kinds = sorted(set(used[args.low]) | set(used[args.high]))
    per_round = {k: (used[args.high][k] - used[args.low][k]) / extra for k in kinds}
    for kind, seconds in sorted(per_round.items(), key=lambda item: -item[1]):
        if kind == "whole machine":
            continue
        print(f"  {kind:<38}{seconds:>7.2f}")
    machine = per_round.pop("whole machine")
    total = sum(per_round.values())
    print(f"  {'all of the above':<38}{total:>7.2f}")
    print(f"  {'whole machine (/proc/stat)':<38}{machine:>7.2f}")
    wall = (walls[args.high] - walls[args.low]) / extra
    print(
        f"wall time per round: {wall:.2f} s on {os.cpu_count()} cores (CPU / cores: "
        f"{total / (os.cpu_count() or 1):.2f} s)"
    )


if __name__ == "__main__":
    main()
