"""Where a deployment round's CPU goes: CPU-seconds per round of each kind of process.

A county of four Fed-Heart-Disease sites on this machine (SuperLink and SuperNodes over
TLS, warm nodes, DP + CKKS, as ``benchmarks/deployment_round.py``) runs the task for
``--rounds`` rounds, after a first run that is not counted. Each process's CPU time (its
own and its reaped children's, from ``/proc/PID/stat``) is read when the ServerApp says
that round 1 ended and again when the last round ended (its ``events.jsonl``); the
difference over the rounds between is a round's CPU by kind of process. Round 1 is left
out: it holds each site's calibration of the run's noise (seconds of CPU, once per run),
and start-up. A task that ended a moment before a snapshot may be counted in the next
one. On a 2-core machine where every process of the county shares the cores, a round
cannot be shorter than its CPU-seconds over 2.

Run: .venv/bin/python benchmarks/deployment_cpu.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

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
    ("countyfl.cli run", "countyfl run (operator)"),
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


class RoundEnds:
    """The rounds whose end the ServerApp has written to a run's ``events.jsonl`` so far
    (each poll reads only what was appended since the last)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.ended: set[int] = set()
        self._readers: dict[Path, Any] = {}

    def poll(self) -> set[int]:
        from countyfl.runs import EventKind, EventReader

        for path in self.output.rglob("events.jsonl") if self.output.exists() else ():
            reader = self._readers.setdefault(path, EventReader(path))
            for event in reader.read_new():
                if event.kind is EventKind.ROUND_END and event.round is not None:
                    self.ended.add(event.round)
        return self.ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.rounds < 2:
        sys.exit("--rounds must be at least 2 (round 1 is not counted)")
    if not Path("/proc/self/stat").exists():
        sys.exit("this benchmark reads /proc (Linux)")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["COUNTYFL_HOME"] = str(root / "home")
        county = LocalCounty(root / "county")
        county.prepare([{**TASK, "num-server-rounds": r} for r in (1, args.rounds)])
        county.start()
        # The county's processes, and this one: `countyfl run` (the operator's command)
        # is a child of this process.
        roots = {process.pid for process in county.processes} | {os.getpid()}
        snapshots: dict[int, tuple[Counter[str], float]] = {}
        try:
            # A first run that is not counted: the nodes' templates finish their imports
            # and each site installs the FAB, which the counted run then uses.
            warm_up = county.run({**TASK, "num-server-rounds": 1}, root / "warm-up")
            if warm_up.returncode != 0:
                sys.exit(f"the warm-up run failed: {warm_up.stdout}{warm_up.stderr}")
            output = root / "run"
            done: list[Any] = []
            runner = threading.Thread(
                target=lambda: done.append(
                    county.run({**TASK, "num-server-rounds": args.rounds}, output)
                )
            )
            runner.start()
            rounds_ended = RoundEnds(output)
            while runner.is_alive() and len(snapshots) < 2:
                ends = rounds_ended.poll()
                for number in (1, args.rounds):
                    if number in ends and number not in snapshots:
                        snapshots[number] = (_cpu(roots), time.monotonic())
                time.sleep(0.05)
            runner.join()
        finally:
            county.stop()
    if not done or done[0].returncode != 0 or len(snapshots) < 2:
        sys.exit(f"the run failed or its rounds were not seen: {done}")
    (first, started), (last, ended) = snapshots[1], snapshots[args.rounds]
    rounds = args.rounds - 1
    print(f"CPU-seconds per round (rounds 2 to {args.rounds} of one run, round 1 left out):")
    per_round = {kind: (last[kind] - first[kind]) / rounds for kind in set(first) | set(last)}
    machine = per_round.pop("whole machine")
    for kind, seconds in sorted(per_round.items(), key=lambda item: -item[1]):
        print(f"  {kind:<38}{seconds:>7.2f}")
    total = sum(per_round.values())
    print(f"  {'all of the above':<38}{total:>7.2f}")
    print(f"  {'whole machine (/proc/stat)':<38}{machine:>7.2f}")
    wall = (ended - started) / rounds
    print(
        f"wall time per round: {wall:.2f} s on {os.cpu_count()} cores (CPU / cores: "
        f"{total / (os.cpu_count() or 1):.2f} s)"
    )


if __name__ == "__main__":
    main()
