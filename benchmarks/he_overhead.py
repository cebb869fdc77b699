"""What CKKS costs: bytes on the wire, round time against plaintext, aggregator throughput.

Measured side by side in one process and printed as ratios:
  1. bytes on the wire per model parameter: countyfl's parameters ([58, 40], scale 2^35,
     no context sent) against TenSEAL's common 8192 [60, 40, 40, 60] and against FLARE's
     habit of sending the context with every vector;
  2. the HE work of one round for K institutions (encrypt K updates, add them with the
     public context, decrypt the sum) against plaintext FedAvg of the same updates, for
     the heart model (14 parameters) and a 1-million-parameter model;
  3. aggregator throughput: ciphertext bytes summed per second;
  4. a whole federated round on Flower's Simulation Engine, Fed-Heart-Disease, with and
     without CKKS (no DP, 3 rounds, per-round wall time after the first round).

    python benchmarks/he_overhead.py [--institutions 4] [--skip-simulation]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts

import countyfl  # noqa: F401  (telemetry off)
from countyfl.privacy.he import codec
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    init_keys,
    load_public_context,
    load_secret_context,
)


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
    print(f"1. bytes per parameter ({size:,} parameters, {chunks} ciphertexts):")
    print(f"   countyfl [58, 40] @2^35, no context  {ours.num_bytes / size:8.1f}   (target <= 32)")
    print(
        f"   TenSEAL common [60, 40, 40, 60]      {theirs / size:8.1f}   "
        f"ratio {theirs / ours.num_bytes:5.2f}x ours"
    )
    print(
        f"   ... with the context on every vector {with_context / size:8.1f}   "
        f"ratio {with_context / ours.num_bytes:5.2f}x ours"
    )


def _round_work(secret: object, public: object, size: int, institutions: int, repeats: int) -> None:
    rng = np.random.default_rng(1)
    updates = [[rng.normal(size=size)] for _ in range(institutions)]
    counts = [int(n) for n in rng.integers(30, 300, size=institutions)]

    def plaintext() -> None:
        total = sum(c * u[0] for c, u in zip(counts, updates, strict=True))
        _ = total / sum(counts)

    summed_bytes = 0
    sum_seconds = 0.0

    def encrypted() -> None:
        nonlocal summed_bytes, sum_seconds
        sent = [codec.encrypt_update(u, c, secret) for u, c in zip(updates, counts, strict=True)]
        started = time.perf_counter()
        total = codec.sum_updates(public, sent)
        sum_seconds += time.perf_counter() - started
        summed_bytes += sum(s.num_bytes for s in sent)
        codec.decrypt_average(total, secret, [(size,)])

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


def _simulated_round(rounds: int) -> None:
    from countyfl.simulations.runner import SimulationRequest, run_simulation_request

    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    per_round: dict[str, float] = {}
    for label, extra in (("plaintext", {}), ("ckks", {"encryption": "ckks"})):
        stamps: list[float] = []

        def progress(
            _label: str, completed: int, _total: int, stamps: list[float] = stamps
        ) -> None:
            stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as folder:
            run_simulation_request(
                SimulationRequest(
                    "fed-heart-disease",
                    Path(folder),
                    [42],
                    {"num-server-rounds": rounds, "dp": False, **extra},
                    baselines=False,
                ),
                progress,
            )
        # stamps[0] is the start; rounds after the first carry no cold start.
        per_round[label] = statistics.median(np.diff(stamps[2:]).tolist())
    ratio = per_round["ckks"] / per_round["plaintext"]
    print(
        f"4. Flower round, Fed-Heart-Disease, 4 institutions: plaintext "
        f"{per_round['plaintext']:.2f} s, CKKS {per_round['ckks']:.2f} s, "
        f"ratio {ratio:.2f} (target <= 1.2)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--institutions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-simulation", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        init_keys(Path(folder))
        secret = load_secret_context(Path(folder) / SECRET_CONTEXT_FILE)
        public = load_public_context(Path(folder) / PUBLIC_CONTEXT_FILE)
        _bytes_per_parameter(secret, public, 1_000_000)
        for size in (14, 1_000_000):
            _round_work(
                secret,
                public,
                size,
                args.institutions,
                args.repeats if size < 10_000 else max(2, args.repeats // 2),
            )
    if not args.skip_simulation:
        _simulated_round(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
