"""County scale: round time and peak memory as the county grows, against Flower's no-op.

For each N (county-16, county-64, county, i.e. 16, 64 and 256 institutions; county-1024
with ``--sizes 16,64,256,1024``), in one process, one after the other:

- **no-op**: Flower's FedAvg on the Simulation Engine with a ClientApp that does no work:
  it answers a train message with the arrays it received and ``num-examples``, and an
  evaluate message with ``num-examples``: the same train and evaluate messages per round;
- **countyfl**: ``countyfl simulate``'s federation on the county of that size, DP-SGD
  (accounted, every institution's ledger) and CKKS, aggregated along the county's levels,
  submitted with ``flwr run`` to a local SuperLink in simulation mode (the no-op runs on
  the same Simulation Engine in this process: the rounds timed are the engine's alone).

Round 1 of each run is excluded (Ray's start-up, actors, imports, the noisy count and the
noise calibration); the round time is the median of rounds 2..R. Peak memory is the
largest resident set of this process and all its descendants (Ray's processes), sampled
every 0.2 s during the run. Prints both side by side, the ratio, and the growth exponent
b of round time ~ N^b (least squares over the sizes).

    python benchmarks/county_scale.py [--sizes 16,64,256] [--rounds 3] [--local-steps 5]
    python benchmarks/county_scale.py --sizes 1024 --fraction-train 0.75

Target (issue 16): ratio <= 2.0 at N = 256, exponent <= 1.1, peak <= 6 GB at N = 1,024.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

import countyfl  # noqa: F401  (telemetry off)

SCENARIOS = {16: "county-16", 64: "county-64", 256: "county", 1024: "county-1024"}


class PeakMemory:
    """Largest total resident set of this process tree, sampled in a thread (Linux /proc)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            self._stop.wait(self.interval)


def _tree_rss(root: int) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, frontier = 0, [root]
    seen = set()
    while frontier:
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        frontier += [child for child, parent in parents.items() if parent == pid]
    return total


def _backend(num_nodes: int) -> dict[str, object]:
    from countyfl.simulations.engine import _cpu_count

    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": max(1, min(num_nodes, _cpu_count())),
            "log_to_driver": False,
            "_system_config": {"max_direct_call_object_size": 1 << 20},
        },
    }


def run_noop(
    num_nodes: int, rounds: int, num_features: int, fraction_train: float = 1.0
) -> tuple[list[float], int]:
    """Round-end times and peak memory of Flower's FedAvg with a no-op ClientApp."""
    import torch
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from countyfl import models
    from countyfl.federation.records import model_to_arrays

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        metrics = MetricRecord({"num-examples": 1})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 1})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    ends: list[float] = []

    class Timed(FedAvg):
        def aggregate_evaluate(
            self, server_round: int, replies: Iterable[Message]
        ) -> MetricRecord | None:
            result = super().aggregate_evaluate(server_round, replies)
            ends.append(time.perf_counter())
            return result

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(0)
        model = models.build("risk-logreg", num_features)
        Timed(
            fraction_train=fraction_train,
            fraction_evaluate=1.0,
            min_available_nodes=num_nodes,
            min_train_nodes=num_nodes,
            min_evaluate_nodes=num_nodes,
        ).start(
            grid=grid,
            initial_arrays=model_to_arrays(model),
            num_rounds=rounds,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
        )

    with PeakMemory() as memory:
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=num_nodes,
            backend_config=_backend(num_nodes),  # type: ignore[arg-type]
        )
    return ends, memory.peak


def run_countyfl(
    num_nodes: int,
    rounds: int,
    local_steps: int,
    accountant: str,
    output: Path,
    fraction_train: float = 1.0,
) -> tuple[list[float], int, list[str]]:
    """Round-end times, peak memory and failures of countyfl's DP + CKKS federation."""
    from countyfl import scenarios
    from countyfl.privacy.he.keys import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE, init_keys
    from countyfl.runs import EVENTS_FILE, EventKind, EventReader
    from countyfl.simulations.runner import build_config, run_federated

    scenario = scenarios.get(SCENARIOS[num_nodes])
    keys = output / "keys"
    init_keys(keys, force=True)
    config = build_config(
        scenario,
        42,
        {
            "num-server-rounds": rounds,
            "local-steps": local_steps,
            "fraction-train": fraction_train,
            "accountant": accountant,
            "dp": True,
            "encryption": "ckks",
            "he-secret-context": str(keys / SECRET_CONTEXT_FILE),
            "he-public-context": str(keys / PUBLIC_CONTEXT_FILE),
        },
        output / scenario.name,
    )
    scenarios.load(scenario.name)  # the driver's copy; each Ray worker loads its own
    with PeakMemory() as memory:
        history = run_federated(config, num_nodes)
    # The ServerApp runs in Flower's flwr-simulation process: its round ends are the
    # times it wrote each round's end event.
    events = EventReader(Path(config.output_dir) / EVENTS_FILE).read_new()
    ends = [e.at.timestamp() for e in events if e.kind is EventKind.ROUND_END]
    failures = [f for record in history.rounds.values() for f in record.failures]
    return ends, memory.peak, failures


def warm_round(ends: list[float]) -> float:
    """The median time of rounds 2..R (round 1 carries the start-up)."""
    if len(ends) < 2:
        raise SystemExit("need at least 2 rounds to time a warm round")
    return statistics.median(np.diff(ends).tolist())


def exponent(sizes: list[int], times: list[float]) -> float:
    """b of time ~ a N^b, least squares in log-log."""
    slope, _ = np.polyfit(np.log(sizes), np.log(times), 1)
    return float(slope)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--accountant", default="rdp", choices=["rdp", "prv"])
    parser.add_argument(
        "--fraction-train",
        type=float,
        default=1.0,
        help="institutions asked to train each round, in both federations (county-1024 "
        "needs 0.75: its 39,057 training rows exceed one CKKS sum's 32,768)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SCENARIOS]
    if unknown:
        parser.error(f"sizes must be among {sorted(SCENARIOS)}, got {unknown}")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(
        f"county scale: {args.rounds} rounds (round 1 excluded), DP-SGD {args.local_steps} "
        f"local steps ({args.accountant}), CKKS; {os.cpu_count()} CPUs",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="county-scale-") as folder:
        for size in sizes:
            started = time.perf_counter()
            noop_ends, noop_peak = run_noop(size, args.rounds, 14, args.fraction_train)
            ours_ends, ours_peak, failures = run_countyfl(
                size,
                args.rounds,
                args.local_steps,
                args.accountant,
                Path(folder) / str(size),
                args.fraction_train,
            )
            noop, ours = warm_round(noop_ends), warm_round(ours_ends)
            rows.append((size, noop, ours, noop_peak, ours_peak, len(failures)))
            print(
                f"N={size:5d}: no-op {noop:7.2f} s/round, countyfl {ours:7.2f} s/round, ratio "
                f"{ours / noop:6.1f}x; peak memory {noop_peak / 2**30:5.2f} GB against "
                f"{ours_peak / 2**30:5.2f} GB; {len(failures)} failures "
                f"[{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
            for failure in failures[:3]:
                print(f"    {failure}")
    print(
        f"\n{'N':>6s} {'no-op s/round':>14s} {'countyfl s/round':>17s} {'ratio':>6s} "
        f"{'no-op peak GB':>14s} {'countyfl peak GB':>17s}"
    )
    for size, noop, ours, noop_peak, ours_peak, _ in rows:
        print(
            f"{size:6d} {noop:14.2f} {ours:17.2f} {ours / noop:6.1f} "
            f"{noop_peak / 2**30:14.2f} {ours_peak / 2**30:17.2f}"
        )
    if len(rows) > 1:
        measured = [r[0] for r in rows]
        print(
            f"growth exponent (round time ~ N^b): no-op b = "
            f"{exponent(measured, [r[1] for r in rows]):.2f}, countyfl b = "
            f"{exponent(measured, [r[2] for r in rows]):.2f} (target <= 1.1)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
