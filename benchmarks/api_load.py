"""What auth and audit cost the API: single-patient predictions per second, p50/p99 latency.

Two servers on 127.0.0.1, each uvicorn with one worker and the same options, serve the
same heart-disease model one after the other in one run:
  - bare: a plain FastAPI endpoint that validates the record, encodes and standardises it,
    predicts and explains (the same countyfl functions), with no authentication, no
    registry lookup and no audit;
  - full: ``countyfl.serving.create_app``: JWT check, the per-request check of the token's
    user in the registry (enabled, approved, role, token version), the registry's permission
    check, the per-request production-version lookup (hot swap) with the live-user check,
    the finite-probability check, the prediction, and a durable audit entry (SQLite,
    synchronous=FULL) before the answer; login throttling is on and the service signs
    audit checkpoints automatically (every 1,000 entries) while it serves.
An httpx async client keeps N connections busy for a fixed time against each; the rounds
alternate (bare, full, bare, full, ...) so that a machine that is busy for a while weighs on
both. It prints requests/s, p50 and p99 latency, the full/bare throughput ratio (target
>= 50 %), and checks that the audit log gained exactly one ``model.predict`` entry per
answered prediction (exit status 1 otherwise).

    python benchmarks/api_load.py [--connections 16] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel

PATIENT: dict[str, Any] = {
    "age": 63,
    "sex": "Male",
    "chest_pain": "asymptomatic",
    "resting_bp": 145.0,
    "cholesterol": 233.0,
    "fasting_blood_sugar_high": True,
    "resting_ecg": "lv hypertrophy",
    "max_heart_rate": 150.0,
    "exercise_angina": False,
    "st_depression": 2.3,
}
MODEL_NAME = "heart-disease-diagnosis"
SECRET = secrets.token_urlsafe(48)
TARGET_RATIO = 0.5


# -- the two servers ---------------------------------------------------------------------


class BareBody(BaseModel):
    """The bare endpoint's body: one patient record."""

    patient: dict[str, Any]


def bare_app(folder: Path) -> Any:
    """The same model behind a plain FastAPI endpoint: no auth, no registry, no audit."""
    from fastapi import FastAPI

    from countyfl import models
    from countyfl.registry import FeatureTransform, ModelMetrics
    from countyfl.registry.schemas import ModelVersionPublic, Stage
    from countyfl.serving.features import standardize, validate_records
    from countyfl.serving.inference import build_served_model

    manifest = json.loads((folder / "model.json").read_text())
    with np.load(folder / "model.npz") as stored:
        state = {key: stored[key] for key in stored.files}
    version = ModelVersionPublic(
        id=1,
        name=manifest["name"],
        version=1,
        stage=Stage.PRODUCTION,
        architecture=manifest["model"],
        run_id="bare",
        scenario=manifest["scenario"],
        task_manifest_hash=None,
        rounds=1,
        institutions=[],
        encryption=None,
        metrics=ModelMetrics(federated={}),
        artifact_sha256=manifest["artifact"]["sha256"],
        artifact_uri=str(folder / "model.npz"),
        registered_by="bench",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        published_at=None,
        history=[],
        features=FeatureTransform.model_validate(manifest["features"]),
    )
    served = build_served_model(version, state)
    assert isinstance(served.module, models.LogisticRegression)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: BareBody) -> dict[str, Any]:
        valid = validate_records(served.spec, [body.patient], ["patient"])
        inputs = standardize(served.spec, valid, served.transform)
        probability = float(served.probabilities(inputs)[0])
        top = served.top_features(served.contributions(inputs)[0])
        return {
            "probability": probability,
            "top_features": [(item.feature, item.contribution) for item in top],
        }

    return app


def serve(mode: str, port: int, folder: Path) -> None:
    """Run one server in this process until it is terminated."""
    import uvicorn

    if mode == "bare":
        app = bare_app(folder)
    else:
        from countyfl.serving import create_app
        from countyfl.settings import ServingSettings

        app = create_app(ServingSettings())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- setup -------------------------------------------------------------------------------


def prepare(root: Path) -> tuple[str, Path]:
    """A registry with a clinician and a production heart model; (database URL, folder)."""
    import torch

    from countyfl import models, scenarios
    from countyfl.audit import AuditLog
    from countyfl.data import fed_heart_disease
    from countyfl.publishing import input_transform, sha256_of
    from countyfl.registry import (
        Principal,
        Role,
        add_user,
        approve_user,
        bootstrap_admin,
        evaluation_data,
        promote,
        register_published,
        set_threshold,
    )
    from countyfl.storage import create_database_engine, upgrade
    from countyfl.training.local import train
    from countyfl.training.plan import TrainingPlan

    data = scenarios.load("fed-heart-disease")
    x, y, _, _ = data.pooled()
    torch.manual_seed(0)
    model = models.build("diagnosis-logreg", data.num_features)
    train(model, x, y, TrainingPlan(200, 32, 0.05), torch.Generator().manual_seed(0))
    folder = root / "published"
    folder.mkdir()
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    (folder / "model.npz").write_bytes(buffer.getvalue())
    institutions = [i.institution_id for i in data.institutions]
    manifest = {
        "name": MODEL_NAME,
        "model": "diagnosis-logreg",
        "run_id": "benchmark",
        "scenario": "fed-heart-disease",
        "task_manifest_hash": None,
        "rounds": 1,
        "institutions": institutions,
        "privacy": {},
        "encryption": None,
        "metrics": {"federated": {"auc": 0.8}, "per_institution": {}},
        "artifact": {"path": "model.npz", "sha256": sha256_of(folder / "model.npz")},
        "created_at": "2026-11-28T10:00:00+00:00",
        "features": input_transform("fed-heart-disease"),
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    url = f"sqlite:///{root / 'countyfl.db'}"
    engine = create_database_engine(url)
    upgrade(engine)
    audit = AuditLog(engine)
    admin = Principal("admin", Role.ADMIN)
    second = Principal("second-admin", Role.ADMIN)
    bootstrap_admin(engine, admin.username, password=None, audit=audit)
    add_user(engine, second.username, Role.ADMIN, password=None, principal=admin, audit=audit)
    for name, role in (
        ("clinician", Role.CLINICIAN),
        ("researcher", Role.RESEARCHER),
        ("regulator", Role.REGULATOR),
    ):
        if add_user(
            engine, name, role, password=None, principal=admin, audit=audit
        ).pending_approval:
            approve_user(engine, name, principal=second, audit=audit)
    version = register_published(
        engine, folder, principal=Principal("researcher", Role.RESEARCHER), audit=audit
    )
    set_threshold(engine, MODEL_NAME, "auc", 0.5, principal=admin, audit=audit)
    _, _, _, by_hospital = fed_heart_disease.hospital_records()
    tests = [fed_heart_disease.split_hospital(rows) for rows in by_hospital.values()]
    heldout = evaluation_data(
        fed_heart_disease.FEATURE_NAMES,
        np.vstack([split[1] for split in tests]),
        np.concatenate([split[3] for split in tests]),
    )
    promote(
        engine,
        MODEL_NAME,
        version.version,
        evaluation=heldout,
        principal=Principal("regulator", Role.REGULATOR),
        audit=audit,
    )
    engine.dispose()
    return url, folder


def predict_entries(url: str) -> int:
    """How many ``model.predict`` entries with outcome ok the audit log holds."""
    from countyfl.audit import AuditLog
    from countyfl.storage import create_database_engine

    engine = create_database_engine(url)
    try:
        return sum(
            1
            for entry in AuditLog(engine).entries()
            if entry.action == "model.predict" and entry.outcome == "ok"
        )
    finally:
        engine.dispose()


def checkpoint_count(url: str) -> int:
    """How many signed checkpoints the audit log holds."""
    from countyfl.audit import AuditLog
    from countyfl.storage import create_database_engine

    engine = create_database_engine(url)
    try:
        return len(AuditLog(engine).checkpoints())
    finally:
        engine.dispose()


# -- load --------------------------------------------------------------------------------


@dataclass
class Load:
    """What one load run measured."""

    server: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def generate(
    server: str,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    connections: int,
    seconds: float,
) -> Load:
    """Keep ``connections`` requests in flight for ``seconds``; count only 200 answers."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        for _ in range(20):  # warm up: connections, the model load, caches
            (await client.post(url, json=body)).raise_for_status()
        load = Load(server, seconds)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post(url, json=body)
                if response.status_code == 200:
                    load.latencies.append(time.perf_counter() - started)
                else:
                    load.errors[response.status_code] = load.errors.get(response.status_code, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        load.seconds = time.perf_counter() - began
        return load


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(mode: str, folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--port", str(port), "--folder", str(folder)],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the {mode} server exited with {process.returncode}")
        try:
            httpx.get(base + "/docs", timeout=1)
            return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"the {mode} server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=["bare", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.folder)
        return 0

    from countyfl.registry import Principal, Role
    from countyfl.serving.auth import issue_access_token

    with tempfile.TemporaryDirectory(prefix="countyfl-api-load-") as tmp:
        root = Path(tmp)
        url, folder = prepare(root)
        (root / "jwt.key").write_text(SECRET)
        (root / "jwt.key").chmod(0o600)
        from countyfl.audit import generate_signing_key

        signing_key, _, _ = generate_signing_key(root / "keys" / "audit-signing.key")
        env = {
            **os.environ,
            "COUNTYFL_DATABASE_URL": url,
            "COUNTYFL_HOME": str(root),
            "COUNTYFL_JWT_SECRET_FILE": str(root / "jwt.key"),
            "COUNTYFL_AUDIT_SIGNING_KEY_FILE": str(signing_key),
        }
        token = issue_access_token(
            Principal("clinician", Role.CLINICIAN),
            SECRET.encode(),
            timedelta(hours=2),
            token_version=0,
        ).token
        body = {"patient": PATIENT}
        loads: list[Load] = []
        full_answered = 0
        before = predict_entries(url)
        for round_number in range(1, args.rounds + 1):
            for mode in ("bare", "full"):
                process, base = start(mode, folder, env)
                try:
                    if mode == "bare":
                        target, headers = f"{base}/predict", {}
                    else:
                        target = f"{base}/v1/models/{MODEL_NAME}/predict"
                        headers = {"Authorization": f"Bearer {token}"}
                    load = asyncio.run(
                        generate(mode, target, body, headers, args.connections, args.seconds)
                    )
                finally:
                    process.terminate()
                    process.wait(timeout=30)
                loads.append(load)
                if mode == "full":
                    full_answered += load.answered + 20  # the warm-up requests count too
                print(
                    f"round {round_number} {mode:4s}: {load.per_second:8.1f} req/s  "
                    f"p50 {load.percentile(0.50):6.1f} ms  p99 {load.percentile(0.99):6.1f} ms  "
                    f"({load.answered} answered, errors {load.errors or 'none'})",
                    flush=True,
                )
        written = predict_entries(url) - before
        checkpoints = checkpoint_count(url)

    def summary(mode: str) -> tuple[float, float, float]:
        mine = [load for load in loads if load.server == mode]
        rate = statistics.median(load.per_second for load in mine)
        p50 = statistics.median(load.percentile(0.50) for load in mine)
        p99 = statistics.median(load.percentile(0.99) for load in mine)
        return rate, p50, p99

    bare, full = summary("bare"), summary("full")
    ratio = full[0] / bare[0]
    pairs = [loads[i + 1].per_second / loads[i].per_second for i in range(0, len(loads) - 1, 2)]
    print()
    print(
        f"uvicorn, 1 worker each, {args.connections} connections, {args.seconds:g} s per run, "
        f"{args.rounds} round(s), {os.cpu_count()} CPUs shared with the load generator"
    )
    print(f"{'server':36s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    print(f"{'bare FastAPI (no auth, no audit)':36s} {bare[0]:8.1f} {bare[1]:8.1f} {bare[2]:8.1f}")
    print(f"{'countyfl (JWT + registry + audit)':36s} {full[0]:8.1f} {full[1]:8.1f} {full[2]:8.1f}")
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"full / bare throughput: {ratio:.0%} of the medians ({verdict} the "
        f"{TARGET_RATIO:.0%} target); per round: {', '.join(f'{r:.0%}' for r in pairs)}"
    )
    matched = written == full_answered
    print(
        f"audit: {written} model.predict entries for {full_answered} answered predictions "
        f"({'equal' if matched else 'MISMATCH'}); {checkpoints} checkpoints signed by the "
        "service while it served"
    )
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
