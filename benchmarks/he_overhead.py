"""What CKKS costs: bytes on the wire, round time against plaintext, aggregator throughput.

Measured side by side in one process and printed as ratios:
  1. bytes on the wire per model parameter: countyfl's parameters ([58, 40], scale 2^35,
     two values per slot, no context sent) against TenSEAL's common 8192 [60, 40, 40, 60]
     with one value per slot, and against FLARE's habit of sending the context with every
     vector;
  2. the HE work of one round for K institutions (encrypt K updates, add them with the
     public context, decrypt the sum) against plaintext FedAvg of the same updates, for
     the heart model (14 parameters) and a 1-million-parameter model;
  3. aggregator throughput: ciphertext bytes summed per second;
  4. a whole federated round on Flower's Simulation Engine, Fed-Heart-Disease, with and
     without CKKS (no DP): countyfl's own ClientApp and strategies, with Flower polling
     as shipped (100 ms) and, patched by this benchmark, every 5 ms;
  5. the same for a 1,001,001-parameter MLP, once per --big-local-steps value (default
     1 and 100), each in its own simulation: with one SGD step per client the round is
     nothing but transport and HE (the hardest case for the ratio); 100 steps of batch 32
     are one local epoch over 3,200 records, the kind of local work FLARE's CIFAR-10
     example does between rounds. countyfl's FedAvg against EncryptedFedAvg and its
     codec, with where a CKKS round goes and the aggregator's throughput inside Flower.
     With --cnn-epoch, also a 1,045,546-parameter CNN for 32x32 colour images whose
     clients train one epoch over 6,250 images at batch 64 per round: the shape of
     FLARE's CIFAR-10 comparison, a model of that size doing a site's local epoch.

Flower rounds (4 and 5) run plaintext and CKKS segments alternately in ONE simulation
(same Ray actors, same minutes of machine noise): each segment is a warm-up round (cold
start, plaintext initial model) and then the timed rounds. Per-round time is the time
between the ends of consecutive rounds. Flower's Simulation Engine polls every 100 ms
(InMemoryGrid.pull_interval, and the loop that hands tasks to the Ray actors), so
heart-model rounds come in steps of about 0.1 s: the printed figure is a mean over all
timed rounds with the 10 % slowest and fastest left out (a median would keep the steps).

    python benchmarks/he_overhead.py [--quick] [--skip-simulation] [--big-local-steps 1,100]
                                     [--ray-inline-kib 100]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import tenseal as ts
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import countyfl  # noqa: F401  (telemetry off)
from countyfl import protocol
from countyfl.federation.strategies.encrypted import EncryptedFedAvg
from countyfl.federation.strategies.recording import RecordingStrategy
from countyfl.privacy.he import codec
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    init_keys,
    load_public_context,
    load_secret_context,
)
from countyfl.privacy.he.wire import META_KEY, arrays_to_update, is_encrypted, update_to_arrays
from countyfl.training.local import get_weights, set_weights

NUM_NODES = 4
MODES = ("plaintext", "ckks")
# Run-config key of the timed segments: which side a message belongs to.
MODE_KEY = "benchmark-mode"
RECEIVE_SECONDS = "benchmark-receive-seconds"
SEND_SECONDS = "benchmark-send-seconds"
# 999 x 1000 + 1000 + 1000 + 1 = 1,001,001 parameters (245 ciphertexts).
BIG_FEATURES = 999
BIG_HIDDEN = 1000
BIG_BATCH = 32
# --cnn-epoch: a CNN of 1,045,546 parameters on 32x32 colour images, trained one local
# epoch per round over 6,250 images (CIFAR-10's 50,000 training images split over 8
# sites) at batch 64, i.e. 98 steps. The images are random tensors: the benchmark times
# work, it does not learn anything.
CNN_IMAGES = 6250
CNN_BATCH = 64


def _bytes_per_parameter(secret: object, public: object, size: int) -> None:
    values = np.random.default_rng(0).normal(size=size)
    ours = codec.encrypt_update([values], 10, secret)
    common = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    common.global_scale = 2**40
    theirs = sum(
        len(ts.ckks_vector(common, values[i : i + 4096].tolist()).serialize())
        for i in range(0, size, 4096)
    )
    chunks = -(-size // 4096)
    with_context = theirs + chunks * len(common.serialize(save_secret_key=False))
    print(
        f"1. bytes per parameter ({size:,} parameters; {len(ours.chunks)} ciphertexts for "
        f"countyfl, {chunks} for one value per slot):"
    )
    print(f"   countyfl [58, 40] @2^35, 2 per slot  {ours.num_bytes / size:8.1f}   (target <= 32)")
    print(
        f"   TenSEAL common [60, 40, 40, 60]      {theirs / size:8.1f}   "
        f"ratio {theirs / ours.num_bytes:5.2f}x ours"
    )
    print(
        f"   ... with the context on every vector {with_context / size:8.1f}   "
        f"ratio {with_context / ours.num_bytes:5.2f}x ours"
    )


def _round_work(
    secret: object, public: object, size: int, institutions: int, repeats: int
) -> float:
    """Print the HE work of a round; return an estimate of what it adds to a round here.

    The estimate: the institutions' encryptions in waves over the cores the simulation's
    Ray workers get (ceil(institutions / workers) of them one after another), then the
    aggregator's sum, then one decryption, less the plaintext averaging they replace; all
    timed here in one quiet process. It is what CKKS would add to a round if Flower, Ray
    and the machine's other work cost nothing more, and no overlap of the institutions'
    work hid any of it; measured rounds come out a little above or below it.
    """
    rng = np.random.default_rng(1)
    updates = [[rng.normal(size=size)] for _ in range(institutions)]
    counts = [int(n) for n in rng.integers(30, 300, size=institutions)]

    def plaintext() -> None:
        total = sum(c * u[0] for c, u in zip(counts, updates, strict=True))
        _ = total / sum(counts)

    summed_bytes = 0
    sum_seconds = 0.0
    encrypt_times: list[float] = []
    sum_times: list[float] = []
    decrypt_times: list[float] = []

    def encrypted() -> None:
        nonlocal summed_bytes, sum_seconds
        started = time.perf_counter()
        sent = [codec.encrypt_update(u, c, secret) for u, c in zip(updates, counts, strict=True)]
        encrypt_times.append((time.perf_counter() - started) / institutions)
        started = time.perf_counter()
        total = codec.sum_updates(public, sent)
        sum_times.append(time.perf_counter() - started)
        sum_seconds += sum_times[-1]
        summed_bytes += sum(s.num_bytes for s in sent)
        started = time.perf_counter()
        codec.decrypt_average(total, secret, [(size,)])
        decrypt_times.append(time.perf_counter() - started)

    plain_times, he_times = [], []
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        started = time.perf_counter()
        plaintext()
        plain_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        encrypted()
        he_times.append(time.perf_counter() - started)
    plain, he = statistics.median(plain_times), statistics.median(he_times)
    print(
        f"2. HE work of one round, {institutions} institutions, {size:,} parameters: "
        f"{he * 1e3:9.1f} ms (plaintext averaging {plain * 1e3:.3f} ms)"
    )
    print(
        f"3. aggregator throughput at {size:,} parameters: "
        f"{summed_bytes / sum_seconds / 1e6:8.1f} MB of ciphertext summed per second"
    )
    encrypt, add, decrypt = (
        statistics.median(t) for t in (encrypt_times, sum_times, decrypt_times)
    )
    waves = -(-institutions // _workers())
    estimate = max(0.0, encrypt * waves + add + decrypt - plain)
    print(
        f"   one institution encrypts in {encrypt * 1e3:.1f} ms, the aggregator adds in "
        f"{add * 1e3:.1f} ms, a key holder decrypts in {decrypt * 1e3:.1f} ms: with "
        f"{institutions} institutions on {_workers()} cores CKKS adds about "
        f"{estimate * 1e3:.0f} ms to a round"
    )
    return estimate


# --- Flower rounds: segments of plaintext and CKKS rounds in one simulation -------------


# Ray passes task arguments and results up to this size inline, larger ones through its
# object store (about 5 ms more per message here): one ciphertext (127 KB) is over.
RAY_INLINE_KIB = 100
SHIPPED_POLL = 0.1  # seconds: Flower 1.42's InMemoryGrid.pull_interval and task pump
FINE_POLL = 0.005
Segment = tuple[str, float]  # (mode, polling interval in seconds)


class Timings:
    """What the server side sees of each round: round ends, aggregation, client timings."""

    def __init__(self) -> None:
        self.round_ends: dict[int, list[float]] = {}  # segment -> perf_counter at round end
        self.aggregation: dict[str, list[tuple[float, int]]] = {m: [] for m in MODES}
        self.client: dict[tuple[str, str], list[float]] = {}  # (mode, metric) -> seconds

    def per_round(self, order: list[Segment]) -> dict[Segment, list[list[float]]]:
        """Per kind of segment, per segment: seconds of each round after the warm-up round."""
        rounds: dict[Segment, list[list[float]]] = {}
        for index, segment in enumerate(order):
            ends = self.round_ends.get(index, [])
            rounds.setdefault(segment, []).append(np.diff(ends).tolist())
        return rounds


class _TaskPump:
    """Flower's task pump with a settable interval, for the rows that poll every 5 ms.

    The Simulation Engine hands tasks to the Ray actors from a loop that sleeps a fixed
    100 ms (``vce_api.add_messages_to_queue``), and ``InMemoryGrid`` waits 100 ms between
    pulls for replies; neither is a run_simulation option. The benchmark swaps in this
    copy of the loop (Flower 1.42) while it runs, and sets the grid's interval per segment.
    """

    interval = SHIPPED_POLL

    @staticmethod
    def run(state: Any, queue: Any, nodes_mapping: Mapping[int, int], f_stop: Any) -> None:
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(_TaskPump.interval)


def _set_polling(grid: Grid, seconds: float) -> None:
    _TaskPump.interval = seconds
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = seconds


def _ciphertext_bytes(replies: Iterable[Message]) -> int:
    total = 0
    for message in replies:
        arrays = None if message.has_error() else message.content.get(protocol.ARRAYS)
        if isinstance(arrays, ArrayRecord) and is_encrypted(arrays):
            total += sum(len(a.data) for name, a in arrays.items() if name != META_KEY)
    return total


def _collect_client_timings(timings: Timings, mode: str, replies: list[Message]) -> None:
    for message in replies:
        metrics = None if message.has_error() else message.content.get(protocol.METRICS)
        if isinstance(metrics, MetricRecord):
            for name in (RECEIVE_SECONDS, SEND_SECONDS):
                if name in metrics:
                    value = metrics[name]
                    assert isinstance(value, float)
                    timings.client.setdefault((mode, name), []).append(value)


def _instrument(strategy: Any, mode: str, timings: Timings) -> None:
    """Time the strategy's aggregation and keep the clients' own timings from the replies."""
    aggregate_train = strategy.aggregate_train
    aggregate_evaluate = strategy.aggregate_evaluate

    def timed_train(server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        _collect_client_timings(timings, mode, replies)
        started = time.perf_counter()
        result = aggregate_train(server_round, replies)
        seconds = time.perf_counter() - started
        timings.aggregation[mode].append((seconds, _ciphertext_bytes(replies)))
        return result

    def timed_evaluate(server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        _collect_client_timings(timings, mode, replies)
        return aggregate_evaluate(server_round, replies)

    strategy.aggregate_train = timed_train
    strategy.aggregate_evaluate = timed_evaluate


StrategyFactory = Callable[[Callable[[int], None]], Any]


def _segments_server_app(
    strategies: Mapping[str, StrategyFactory],
    initial_arrays: Mapping[str, ArrayRecord],
    order: list[Segment],
    rounds: int,
    timings: Timings,
) -> ServerApp:
    """A ServerApp that runs 1 + ``rounds`` rounds per segment, in the given order."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for segment, (mode, poll) in enumerate(order):
            _set_polling(grid, poll)
            ends = timings.round_ends.setdefault(segment, [])

            def on_round_end(server_round: int, ends: list[float] = ends) -> None:
                ends.append(time.perf_counter())

            strategy = strategies[mode](on_round_end)
            _instrument(strategy, mode, timings)
            strategy.start(
                grid=grid,
                initial_arrays=initial_arrays[mode],
                num_rounds=1 + rounds,
                train_config=ConfigRecord({MODE_KEY: mode}),
                evaluate_config=ConfigRecord({MODE_KEY: mode}),
            )

    return app


def _mode_of(message: Message) -> str:
    config = message.content.get(protocol.CONFIG)
    mode = config.get(MODE_KEY) if isinstance(config, ConfigRecord) else None
    if mode not in MODES:
        raise ValueError(f"a benchmark task without {MODE_KEY}")
    return str(mode)


def make_dispatching_client_app(apps: Mapping[str, ClientApp]) -> ClientApp:
    """One ClientApp that hands each message to the app of its segment's mode."""
    dispatcher = ClientApp()

    @dispatcher.train()
    def train(msg: Message, context: Context) -> Message:
        return apps[_mode_of(msg)](msg, context)

    @dispatcher.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return apps[_mode_of(msg)](msg, context)

    return dispatcher


def big_model(kind: str = "mlp") -> torch.nn.Module:
    """The 1M-parameter model: an MLP (999 inputs, 1,000 hidden units, one logit;
    1,001,001 parameters) or, for ``kind`` "cnn", a CIFAR-10-shaped CNN (1,045,546)."""
    if kind == "cnn":
        nn = torch.nn
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 x 8
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4 x 4
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(256 * 16, 160), nn.ReLU(), nn.Linear(160, 10),
        )  # fmt: skip
    return torch.nn.Sequential(
        torch.nn.Linear(BIG_FEATURES, BIG_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(BIG_HIDDEN, 1)
    )


@functools.lru_cache(maxsize=2)
def _secret_context(path: str) -> Any:
    # Cached per Ray worker: this module is imported there by name (see _importable_self).
    return load_secret_context(Path(path))


def _receive_big(model: torch.nn.Module, content: RecordDict, secret_path: str) -> float:
    arrays = content[protocol.ARRAYS]
    assert isinstance(arrays, ArrayRecord)
    started = time.perf_counter()
    if is_encrypted(arrays):
        shapes = [tuple(t.shape) for t in model.state_dict().values()]
        average = codec.decrypt_average(
            arrays_to_update(arrays), _secret_context(secret_path), shapes
        )
        set_weights(model, average)
    else:
        model.load_state_dict(arrays.to_torch_state_dict())
    return time.perf_counter() - started


def _loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "cnn":
        return torch.nn.functional.cross_entropy(logits, y)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), y)


def _cnn_batch(partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(partition_id)
    x = torch.randn(CNN_BATCH, 3, 32, 32, generator=generator)
    return x, torch.randint(0, 10, (CNN_BATCH,), generator=generator)


def _big_batch(partition_id: int, kind: str = "mlp") -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "cnn":
        return _cnn_batch(partition_id)
    generator = torch.Generator().manual_seed(partition_id)
    x = torch.randn(BIG_BATCH, BIG_FEATURES, generator=generator)
    return x, (x[:, 0] > 0).float()


def make_big_client_app(secret_path: str, local_steps: int = 1, kind: str = "mlp") -> ClientApp:
    """Clients of the 1M model: receive, ``local_steps`` SGD steps, send Enc(n w) or w."""
    batch = CNN_BATCH if kind == "cnn" else BIG_BATCH
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        partition_id = int(str(context.node_config[protocol.PARTITION_ID]))
        model = big_model(kind)
        received = _receive_big(model, msg.content, secret_path)
        x, y = _big_batch(partition_id, kind)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(max(1, local_steps)):
            loss = _loss(kind, model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        num_examples = batch * local_steps + partition_id  # unequal weights, as in FedAvg
        started = time.perf_counter()
        if _mode_of(msg) == "ckks":
            secret = _secret_context(secret_path)
            arrays = update_to_arrays(
                codec.encrypt_update(get_weights(model), num_examples, secret)
            )
        else:
            arrays = ArrayRecord(model.state_dict())
        metrics = MetricRecord(
            {
                protocol.NUM_EXAMPLES: num_examples,
                protocol.PARTITION_ID: partition_id,
                RECEIVE_SECONDS: received,
                SEND_SECONDS: time.perf_counter() - started,
            }
        )
        return Message(
            RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: metrics}), reply_to=msg
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        partition_id = int(str(context.node_config[protocol.PARTITION_ID]))
        model = big_model(kind)
        received = _receive_big(model, msg.content, secret_path)
        x, y = _big_batch(partition_id, kind)
        with torch.no_grad():
            loss = float(_loss(kind, model(x), y))
        metrics = MetricRecord(
            {
                protocol.NUM_EXAMPLES: batch,
                protocol.PARTITION_ID: partition_id,
                protocol.LOSS: loss,
                RECEIVE_SECONDS: received,
            }
        )
        return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)

    return app


def _importable_self() -> ModuleType:
    """This file as a module Ray workers can import by name.

    Run as a script, its functions belong to ``__main__``, which cloudpickle sends by value
    and which a Ray worker cannot look names up in; imported under its own name, the
    workers import it too (Flower puts the driver's sys.path on their PYTHONPATH), and
    module-level caches such as the loaded secret context persist per worker.
    """
    if __name__ != "__main__":
        return sys.modules[__name__]
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(Path(__file__).stem)


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(NUM_NODES, cpus or 1))


def _can_pump() -> bool:
    """Whether this Flower's task pump is the one _TaskPump copies (Flower 1.42)."""
    import inspect

    from flwr.server.superlink.fleet.vce import vce_api

    pump = getattr(vce_api, "add_messages_to_queue", None)
    return pump is not None and list(inspect.signature(pump).parameters) == [
        "state",
        "queue",
        "nodes_mapping",
        "f_stop",
    ]


def _simulate(server_app: ServerApp, client_app: ClientApp, ray_inline_kib: int) -> None:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.simulation import run_simulation

    init_args: dict[str, Any] = {"num_cpus": _workers(), "log_to_driver": False}
    if ray_inline_kib != RAY_INLINE_KIB:
        init_args["_system_config"] = {"max_direct_call_object_size": ray_inline_kib * 1024}
    shipped = getattr(vce_api, "add_messages_to_queue", None)
    if _can_pump():
        vce_api.add_messages_to_queue = _TaskPump.run
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=NUM_NODES,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": init_args,
            },
        )
    finally:
        if shipped is not None:
            vce_api.add_messages_to_queue = shipped
        _TaskPump.interval = SHIPPED_POLL


def _order(segments: int, polls: tuple[float, ...]) -> list[Segment]:
    return [(mode, poll) for _ in range(segments) for poll in polls for mode in MODES]


def _check(timings: Timings, order: list[Segment], rounds: int) -> dict[Segment, list[list[float]]]:
    per_round = timings.per_round(order)
    for (mode, _), segments in per_round.items():
        for segment in segments:
            if len(segment) != rounds:
                raise RuntimeError(
                    f"a {mode} segment finished {len(segment) + 1} of {rounds + 1} rounds; "
                    "rerun with logging on (flwr, ray) to see why"
                )
    return per_round


def _format(per_segment: list[list[float]]) -> str:
    return " | ".join(" ".join(f"{s:.2f}" for s in segment) for segment in per_segment)


def _typical(per_segment: list[list[float]]) -> float:
    """Mean of all rounds without the slowest and fastest 10 % (machine noise, 0.1 s steps)."""
    ordered = sorted(s for segment in per_segment for s in segment)
    cut = len(ordered) // 10
    return statistics.fmean(ordered[cut : len(ordered) - cut])


def _heart_rounds(folder: Path, segments: int, rounds: int, ray_inline_kib: int) -> None:
    from countyfl import models, scenarios
    from countyfl.federation.client_app import make_client_app
    from countyfl.federation.records import model_to_arrays
    from countyfl.federation.server_app import build_strategy
    from countyfl.simulations.runner import build_config

    scenario = scenarios.get("fed-heart-disease")
    common = {"num-server-rounds": 1 + rounds, "dp": False}
    he = {
        "encryption": "ckks",
        "he-secret-context": str(folder / SECRET_CONTEXT_FILE),
        "he-public-context": str(folder / PUBLIC_CONTEXT_FILE),
    }
    configs = {
        "plaintext": build_config(scenario, 42, common, folder / "plaintext"),
        "ckks": build_config(scenario, 42, {**common, **he}, folder / "ckks"),
    }
    num_features, num_institutions = scenario.num_features, scenario.num_institutions
    torch.manual_seed(42)
    initial = models.build(configs["plaintext"].model, num_features)
    num_values = sum(int(t.numel()) for t in initial.state_dict().values())

    def factory(mode: str) -> StrategyFactory:
        return lambda on_round_end: build_strategy(
            configs[mode], num_institutions, num_values, on_round_end
        )

    polls = (SHIPPED_POLL, FINE_POLL) if _can_pump() else (SHIPPED_POLL,)
    order, timings = _order(segments, polls), Timings()
    _simulate(
        _segments_server_app(
            {m: factory(m) for m in MODES},
            {m: model_to_arrays(initial) for m in MODES},
            order,
            rounds,
            timings,
        ),
        _importable_self().make_dispatching_client_app(
            {m: make_client_app(configs[m]) for m in MODES}
        ),
        ray_inline_kib,
    )
    per_round = _check(timings, order, rounds)
    ray = "" if ray_inline_kib == RAY_INLINE_KIB else f", Ray inlining up to {ray_inline_kib} KiB"
    print(f"4. Flower round, Fed-Heart-Disease, {num_institutions} institutions{ray}:")
    for poll in polls:
        plain, he_round = (_typical(per_round[(m, poll)]) for m in MODES)
        shipped = " (as shipped)" if poll == SHIPPED_POLL else " (benchmark patch)"
        print(
            f"   Flower polling every {poll * 1e3:3.0f} ms{shipped}: "
            f"plaintext {plain:.2f} s, CKKS {he_round:.2f} s, ratio {he_round / plain:.2f} "
            "(target <= 1.2)"
        )
        for mode in MODES:
            print(f"     {mode:9s} rounds, by segment (s): {_format(per_round[(mode, poll)])}")
    seconds, plain_seconds = (
        statistics.median(s for s, _ in timings.aggregation[m]) for m in ("ckks", "plaintext")
    )
    print(
        f"   server aggregation per round: CKKS {seconds * 1e3:.1f} ms, "
        f"plaintext {plain_seconds * 1e3:.1f} ms"
    )


def _big_rounds(
    folder: Path,
    segments: int,
    rounds: int,
    local_steps: int,
    ray_inline_kib: int,
    estimate: float | None = None,
    kind: str = "mlp",
) -> None:
    module = _importable_self()
    initial = module.big_model(kind)
    num_values = sum(int(t.numel()) for t in initial.state_dict().values())
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": NUM_NODES,
        "min_evaluate_nodes": NUM_NODES,
        "min_available_nodes": NUM_NODES,
    }
    strategies: dict[str, StrategyFactory] = {
        "plaintext": lambda on_round_end: RecordingStrategy(
            FedAvg(**common), on_round_end=on_round_end
        ),
        "ckks": lambda on_round_end: RecordingStrategy(
            EncryptedFedAvg(
                public_context_path=folder / PUBLIC_CONTEXT_FILE, num_values=num_values, **common
            ),
            on_round_end=on_round_end,
        ),
    }
    order, timings = _order(segments, (SHIPPED_POLL,)), Timings()
    _simulate(
        _segments_server_app(
            strategies,
            {m: ArrayRecord(initial.state_dict()) for m in MODES},
            order,
            rounds,
            timings,
        ),
        module.make_big_client_app(str(folder / SECRET_CONTEXT_FILE), local_steps, kind),
        ray_inline_kib,
    )
    per_round = _check(timings, order, rounds)
    plain, he_round = (_typical(per_round[(m, SHIPPED_POLL)]) for m in MODES)
    batch = CNN_BATCH if kind == "cnn" else BIG_BATCH
    steps = f"{local_steps} SGD step{'s' if local_steps > 1 else ''} of batch {batch}"
    if kind == "cnn":
        steps += f" (one epoch of {CNN_IMAGES:,} 32x32 colour images)"
    print(
        f"5. Flower round, {num_values:,}-parameter {kind.upper()}, {NUM_NODES} clients, "
        f"{steps} each: "
        f"plaintext {plain:.2f} s, CKKS {he_round:.2f} s, ratio {he_round / plain:.2f} "
        "(target <= 1.5; FLARE reports 2.7 for CIFAR-10)"
    )
    for mode in MODES:
        print(f"   {mode:9s} rounds, by segment (s): {_format(per_round[(mode, SHIPPED_POLL)])}")

    def client(mode: str, name: str) -> float:
        return statistics.fmean(timings.client.get((mode, name), [float("nan")]))

    print(
        "   per client call (mean s): receive the model (decrypt, or reuse what this worker "
        f"decrypted | load) {client('ckks', RECEIVE_SECONDS):.3f} | "
        f"{client('plaintext', RECEIVE_SECONDS):.3f}, send it (encrypt | ArrayRecord) "
        f"{client('ckks', SEND_SECONDS):.3f} | {client('plaintext', SEND_SECONDS):.3f}; a CKKS "
        f"round has {NUM_NODES} sends and {2 * NUM_NODES} receives on {_workers()} Ray workers"
    )
    measured = timings.aggregation["ckks"]
    plain_seconds = statistics.median(s for s, _ in timings.aggregation["plaintext"])
    seconds = statistics.median(s for s, _ in measured)
    summed = sum(b for _, b in measured) / sum(s for s, _ in measured)
    print(
        f"   server aggregation per round: CKKS {seconds:.2f} s "
        f"({statistics.median(b for _, b in measured) / 1e6:.0f} MB of ciphertext), "
        f"plaintext {plain_seconds:.3f} s"
    )
    added = he_round - plain
    plain_rounds = per_round[("plaintext", SHIPPED_POLL)]
    spread = statistics.pstdev(s for segment in plain_rounds for s in segment)
    if added <= spread:
        print(
            f"   CKKS adds {added:+.2f} s per round, within the spread of the plaintext rounds "
            f"({spread:.2f} s): nothing measurable at this round length"
        )
    else:
        print(
            f"   CKKS adds {added:.2f} s per round: the ratio is <= 1.5 once a plaintext round "
            f"takes >= {2 * added:.1f} s here (local training included)"
        )
    if estimate is not None:
        print(
            f"   HE work alone, timed in section 2, comes to about {estimate:.2f} s a round "
            f"here: with this plaintext round, a ratio near {(plain + estimate) / plain:.2f}"
        )
    print(
        f"3. aggregator throughput in the Flower run ({num_values:,} parameters, replies "
        f"checked, deserialised, added, re-serialised): {summed / 1e6:.1f} MB of ciphertext "
        "summed per second"
    )


def _simulated_rounds(args: argparse.Namespace, estimate: float | None) -> None:
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        init_keys(Path(folder))
        if not args.skip_heart:
            _heart_rounds(Path(folder), args.segments, args.rounds, args.ray_inline_kib)
        if not args.skip_big:
            for local_steps in args.big_local_steps:
                _big_rounds(
                    Path(folder),
                    args.big_segments,
                    args.big_rounds,
                    local_steps,
                    args.ray_inline_kib,
                    estimate,
                )
            if args.cnn_epoch:  # rounds of about 20 s here: one segment per mode
                _big_rounds(
                    Path(folder),
                    1,
                    args.big_rounds,
                    -(-CNN_IMAGES // CNN_BATCH),
                    args.ray_inline_kib,
                    estimate,
                    kind="cnn",
                )


def _steps_list(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of steps"
        ) from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more step counts >= 1")
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--institutions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segments", type=int, default=4, help="heart segments per mode")
    parser.add_argument("--rounds", type=int, default=5, help="timed heart rounds per segment")
    parser.add_argument("--big-segments", type=int, default=2, help="1M segments per mode")
    parser.add_argument("--big-rounds", type=int, default=3, help="timed 1M rounds per segment")
    parser.add_argument(
        "--big-local-steps",
        type=_steps_list,
        default=[1, 100],
        help="SGD steps per 1M client, comma-separated: one simulation each (default 1,100)",
    )
    parser.add_argument(
        "--ray-inline-kib",
        type=int,
        default=RAY_INLINE_KIB,
        help="Ray's max_direct_call_object_size in KiB (Ray's default: 100)",
    )
    parser.add_argument(
        "--cnn-epoch",
        action="store_true",
        help="also a 1M-parameter CNN whose clients train one epoch of 6,250 images a round",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, segments, rounds")
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--skip-heart", action="store_true", help="no heart-model Flower rounds")
    parser.add_argument("--skip-big", action="store_true", help="no 1M-parameter Flower rounds")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.segments, args.rounds, args.big_segments, args.big_rounds = 3, 2, 4, 2, 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        init_keys(Path(folder))
        secret = load_secret_context(Path(folder) / SECRET_CONTEXT_FILE)
        public = load_public_context(Path(folder) / PUBLIC_CONTEXT_FILE)
        _bytes_per_parameter(secret, public, 1_000_000)
        estimates = {
            size: _round_work(
                secret,
                public,
                size,
                args.institutions,
                args.repeats if size < 10_000 else max(2, args.repeats // 2),
            )
            for size in (14, 1_000_000)
        }
    if not args.skip_simulation:
        # The estimate fits the simulation's clients only if they are as many.
        _simulated_rounds(args, estimates[1_000_000] if args.institutions == NUM_NODES else None)
    print(f"(benchmark wall time {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
