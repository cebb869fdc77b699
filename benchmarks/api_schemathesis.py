"""Schemathesis over the clinician API's whole OpenAPI spec, with each role's token.

A longer run than the test suite's (tests/serving/test_openapi_property.py): a registry
with a user of every role and both served models in production, the API under uvicorn on
127.0.0.1 (throttling on, audit checkpoints signed automatically), and for each role
``st run`` with every check schemathesis has (``--checks all``), valid and invalid data,
the examples, coverage and fuzzing phases. It prints, per role, the test cases sent and
the failures found, and exits 1 if any check failed.

    python benchmarks/api_schemathesis.py [--max-examples 200] [--seed 2026]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROLES = ("admin", "researcher", "clinician", "auditor", "regulator", "node")
SCENARIOS = {
    "heart-disease-diagnosis": ("fed-heart-disease", "diagnosis-logreg"),
    "coronary-risk-10y": ("framingham-county", "risk-logreg"),
}


def heldout(scenario: str) -> Any:
    """Every institution's test rows of ``scenario`` in raw units, as evaluation data."""
    from countyfl import scenarios
    from countyfl.data import fed_heart_disease, framingham
    from countyfl.registry import evaluation_data

    if scenario == "fed-heart-disease":
        _, _, _, by_hospital = fed_heart_disease.hospital_records()
        tests = [fed_heart_disease.split_hospital(rows) for rows in by_hospital.values()]
        return evaluation_data(
            fed_heart_disease.FEATURE_NAMES,
            np.vstack([split[1] for split in tests]),
            np.concatenate([split[3] for split in tests]),
        )
    _, _, x_test, y_test = scenarios.load(scenario).pooled()
    mean = np.array([framingham.REFERENCE_SCALE[name][0] for name in framingham.FEATURES])
    scale = np.array([framingham.REFERENCE_SCALE[name][1] for name in framingham.FEATURES])
    return evaluation_data(framingham.FEATURE_NAMES, x_test * scale + mean, y_test)


def prepare(root: Path) -> str:
    """A registry with a user of every role and both models in production; its URL."""
    import torch

    from countyfl import models, scenarios
    from countyfl.audit import AuditLog
    from countyfl.publishing import input_transform, sha256_of
    from countyfl.registry import (
        Principal,
        Role,
        add_user,
        approve_api_token,
        approve_user,
        bootstrap_admin,
        create_api_token,
        promote,
        register_published,
        set_threshold,
    )
    from countyfl.storage import create_database_engine, upgrade
    from countyfl.training.local import train
    from countyfl.training.plan import TrainingPlan

    url = f"sqlite:///{root / 'countyfl.db'}"
    engine = create_database_engine(url)
    upgrade(engine)
    audit = AuditLog(engine)
    admin, second = Principal("admin", Role.ADMIN), Principal("second-admin", Role.ADMIN)
    bootstrap_admin(engine, admin.username, password=None, audit=audit)
    add_user(engine, second.username, Role.ADMIN, password=None, principal=admin, audit=audit)
    for role in ROLES[1:]:
        added = add_user(engine, role, Role(role), password=None, principal=admin, audit=audit)
        if added.pending_approval:
            approve_user(engine, role, principal=second, audit=audit)
    for owner in ("clinician", "node"):  # API tokens exist too (never sent by this run)
        issued = create_api_token(engine, owner, name="run", principal=admin, audit=audit)
        if issued.token.pending_approval:
            approve_api_token(engine, issued.token.id, principal=second, audit=audit)
    for name, (scenario, architecture) in SCENARIOS.items():
        data = scenarios.load(scenario)
        x, y, _, _ = data.pooled()
        torch.manual_seed(0)
        model = models.build(architecture, data.num_features)
        train(model, x, y, TrainingPlan(200, 32, 0.05), torch.Generator().manual_seed(0))
        folder = root / f"published-{name}"
        folder.mkdir()
        buffer = io.BytesIO()
        np.savez(buffer, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        (folder / "model.npz").write_bytes(buffer.getvalue())
        manifest = {
            "name": name,
            "model": architecture,
            "run_id": "schemathesis",
            "scenario": scenario,
            "task_manifest_hash": None,
            "rounds": 1,
            "institutions": [i.institution_id for i in data.institutions],
            "privacy": {},
            "encryption": None,
            "metrics": {"federated": {"auc": 0.8}, "per_institution": {}},
            "artifact": {"path": "model.npz", "sha256": sha256_of(folder / "model.npz")},
            "created_at": "2026-12-05T10:00:00+00:00",
            "features": input_transform(scenario),
        }
        (folder / "model.json").write_text(json.dumps(manifest))
        version = register_published(
            engine, folder, principal=Principal("researcher", Role.RESEARCHER), audit=audit
        )
        set_threshold(engine, name, "auc", 0.6, principal=admin, audit=audit)
        promote(
            engine,
            name,
            version.version,
            evaluation=heldout(scenario),
            principal=Principal("regulator", Role.REGULATOR),
            audit=audit,
        )
    engine.dispose()
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(port: int) -> None:
    """Run the API in this process until it is terminated (settings from the environment)."""
    import uvicorn

    from countyfl.serving import create_app
    from countyfl.settings import ServingSettings

    app = create_app(ServingSettings())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_role(
    role: str, base: str, token: str, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """``st run`` with ``role``'s token; the counts it reports."""
    report = out / f"{role}.json"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        "--workers",
        "1",
        "--no-color",
        "--suppress-health-check",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    # st keeps a cache in its working folder: run it in the run's own temporary folder.
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=out.parent)
    (out / f"{role}.txt").write_text(done.stdout + done.stderr)
    summary = {"exit": done.returncode, "output": done.stdout[-2500:]}
    match = re.search(r"Test cases:\s*(\d+) generated,\s*(\d+) passed", done.stdout)
    if match:
        summary["generated"], summary["passed"] = int(match[1]), int(match[2])
    failures = re.search(r"(\d+) unique failures?", done.stdout)
    summary["failures"] = int(failures[1]) if failures else 0
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--keep", type=Path, help="copy each role's st output into this folder")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    from countyfl.audit import generate_signing_key
    from countyfl.registry import Principal, Role
    from countyfl.registry.principals import token_version_of
    from countyfl.serving.auth import issue_access_token
    from countyfl.storage import create_database_engine

    with tempfile.TemporaryDirectory(prefix="countyfl-schemathesis-") as tmp:
        root = Path(tmp)
        url = prepare(root)
        secret = secrets.token_urlsafe(48)
        (root / "jwt.key").write_text(secret)
        (root / "jwt.key").chmod(0o600)
        key, _, _ = generate_signing_key(root / "keys" / "audit-signing.key")
        env = {
            **os.environ,
            "COUNTYFL_DATABASE_URL": url,
            "COUNTYFL_HOME": str(root),
            "COUNTYFL_JWT_SECRET_FILE": str(root / "jwt.key"),
            "COUNTYFL_AUDIT_SIGNING_KEY_FILE": str(key),
        }
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port)], env=env, cwd=tmp
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"the API exited with {process.returncode}")
                try:
                    httpx.get(f"{base}/v1/health", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the API did not start") from None
                    time.sleep(0.3)
            engine = create_database_engine(url)
            out = args.keep or root / "reports"
            out.mkdir(parents=True, exist_ok=True)
            results = {}
            for role in ROLES:
                principal = Principal(role, Role(role))
                token = issue_access_token(
                    principal,
                    secret.encode(),
                    timedelta(hours=2),
                    token_version=token_version_of(engine, role) or 0,
                ).token
                started = time.monotonic()
                results[role] = run_role(role, base, token, args, out)
                results[role]["seconds"] = time.monotonic() - started
                item = results[role]
                print(
                    f"{role:10s} exit {item['exit']}  test cases "
                    f"{item.get('generated', '?')} generated, {item.get('passed', '?')} "
                    f"passed, {item['failures']} unique failures ({item['seconds']:.0f} s)",
                    flush=True,
                )
            engine.dispose()
        finally:
            process.terminate()
            process.wait(timeout=60)
    failed = [role for role, item in results.items() if item["exit"] != 0 or item["failures"]]
    for role in failed:
        print(f"\n--- {role} ---\n{results[role]['output']}")
    total = sum(int(item.get("generated", 0)) for item in results.values())
    print(
        f"\nschemathesis {'found failures for ' + ', '.join(failed) if failed else 'clean'}: "
        f"{total} test cases over {len(ROLES)} roles, --checks all, "
        f"--max-examples {args.max_examples}, seed {args.seed}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
