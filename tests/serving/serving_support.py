"""Helpers of the serving tests: trained models, a registry with users, a live server."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, text

from countyfl import models, scenarios
from countyfl.audit import AuditLog
from countyfl.data import fed_heart_disease, framingham
from countyfl.publishing import input_transform
from countyfl.registry import (
    EvaluationData,
    ModelVersionPublic,
    Principal,
    Role,
    add_user,
    approve_api_token,
    approve_user,
    bootstrap_admin,
    create_api_token,
    evaluation_data,
    promote,
    register_published,
    set_threshold,
)
from countyfl.registry.principals import token_version_of
from countyfl.serving.auth import issue_access_token
from countyfl.settings import ServingSettings
from countyfl.storage import create_database_engine, upgrade
from countyfl.training.local import train
from countyfl.training.plan import TrainingPlan

PASSWORD = "correct horse battery staple"
SECRET = secrets.token_urlsafe(48)
"""A random JWT secret, as a real deployment has (weak ones are refused)."""
HEART = "heart-disease-diagnosis"
RISK = "coronary-risk-10y"

ADMIN = Principal("ada", Role.ADMIN)
SECOND_ADMIN = Principal("adam", Role.ADMIN)
RESEARCHER = Principal("rita", Role.RESEARCHER)
CLINICIAN = Principal("chen", Role.CLINICIAN)
AUDITOR = Principal("aude", Role.AUDITOR)
REGULATOR = Principal("reg", Role.REGULATOR)
SECOND_REGULATOR = Principal("rex", Role.REGULATOR)
NODE = Principal("county-node", Role.NODE)
PRINCIPALS = {p.role: p for p in (ADMIN, RESEARCHER, CLINICIAN, AUDITOR, REGULATOR, NODE)}

HEART_PATIENT: dict[str, Any] = {
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
FRAMINGHAM_PATIENT: dict[str, Any] = {
    "male": 1,
    "age": 61,
    "current_smoker": 1,
    "cigarettes_per_day": 30.0,
    "bp_medication": 0,
    "prevalent_stroke": 0,
    "prevalent_hypertension": 1,
    "diabetes": 0,
    "total_cholesterol": 225.0,
    "systolic_bp": 150.0,
    "diastolic_bp": 95.0,
    "bmi": 28.58,
    "heart_rate": 65.0,
    "glucose": 103.0,
}


@cache
def trained_state(scenario: str, architecture: str, seed: int) -> dict[str, np.ndarray]:
    """A model trained in-process on a scenario's pooled train rows (cached per session)."""
    data = scenarios.load(scenario)
    x, y, _, _ = data.pooled()
    torch.manual_seed(seed)
    model = models.build(architecture, data.num_features)
    generator = torch.Generator().manual_seed(seed)
    train(model, x, y, TrainingPlan(local_steps=300, batch_size=32, learning_rate=0.05), generator)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def publish_model(
    folder: Path,
    *,
    name: str = HEART,
    scenario: str = "fed-heart-disease",
    architecture: str = "diagnosis-logreg",
    seed: int = 0,
    features: bool = True,
) -> Path:
    """Write model.npz and model.json as ``countyfl model publish`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **trained_state(scenario, architecture, seed))
    (folder / "model.npz").write_bytes(buffer.getvalue())
    institutions = [i.institution_id for i in scenarios.load(scenario).institutions]
    manifest: dict[str, Any] = {
        "name": name,
        "model": architecture,
        "run_id": f"run-{seed}",
        "scenario": scenario,
        "task_manifest_hash": None,
        "rounds": 3,
        "institutions": institutions,
        "privacy": {
            i: {"epsilon": 1.0 + n / 10, "delta": 1e-3} for n, i in enumerate(institutions)
        },
        "encryption": None,
        "metrics": {"federated": {"auc": 0.8, "accuracy": 0.75}, "per_institution": {}},
        "artifact": {
            "path": "model.npz",
            "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        },
        "created_at": "2026-11-28T10:00:00+00:00",
    }
    if features:
        manifest["features"] = input_transform(scenario)
    (folder / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@cache
def heldout(scenario: str) -> EvaluationData:
    """Held-out rows of ``scenario`` in raw units (every institution's test split).

    What a regulator supplies to ``promote``: the registry measures the model on them.
    """
    if scenario == "fed-heart-disease":
        _, _, _, by_hospital = fed_heart_disease.hospital_records()
        features, labels = [], []
        for rows in by_hospital.values():
            _, x_test, _, y_test = fed_heart_disease.split_hospital(rows)
            features.append(x_test)
            labels.append(y_test)
        return evaluation_data(
            fed_heart_disease.FEATURE_NAMES,
            np.vstack(features),
            np.concatenate(labels),
            source="heart test splits",
        )
    _, _, x_test, y_test = scenarios.load(scenario).pooled()
    mean = np.array([framingham.REFERENCE_SCALE[name][0] for name in framingham.FEATURES])
    scale = np.array([framingham.REFERENCE_SCALE[name][1] for name in framingham.FEATURES])
    return evaluation_data(
        framingham.FEATURE_NAMES, x_test * scale + mean, y_test, source="framingham test splits"
    )


@dataclass
class Deployment:
    """A migrated registry with one user per role, and helpers to publish and promote."""

    root: Path
    engine: Engine
    audit: AuditLog
    api_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    def settings(self, **overrides: Any) -> ServingSettings:
        values: dict[str, Any] = {
            "database_url": self.url,
            "home": self.root,
            "jwt_secret": SECRET,
            **overrides,
        }
        return ServingSettings(**values)

    def register(self, name: str = HEART, *, seed: int = 0, **publish: Any) -> ModelVersionPublic:
        """Publish and register (as the researcher) a candidate version."""
        folder = publish_model(
            self.root / f"published-{name}-{seed}-{time.monotonic_ns()}",
            name=name,
            seed=seed,
            **publish,
        )
        return register_published(self.engine, folder, principal=RESEARCHER, audit=self.audit)

    def release(
        self,
        name: str = HEART,
        *,
        seed: int = 0,
        scenario: str = "fed-heart-disease",
        **publish: Any,
    ) -> int:
        """Publish, register (researcher) and promote (regulator, measured on held-out data)."""
        version = self.register(name, seed=seed, scenario=scenario, **publish)
        set_threshold(self.engine, name, "auc", 0.5, principal=ADMIN, audit=self.audit)
        promote(
            self.engine,
            name,
            version.version,
            evaluation=heldout(scenario),
            principal=REGULATOR,
            audit=self.audit,
        )
        return version.version

    def bearer(self, principal: Principal, *, key: str = SECRET) -> dict[str, str]:
        """An Authorization header with a fresh access token of ``principal``."""
        from datetime import timedelta

        version = token_version_of(self.engine, principal.username) or 0
        token = issue_access_token(
            principal, key.encode(), timedelta(minutes=15), token_version=version
        ).token
        return {"Authorization": f"Bearer {token}"}

    def entries(self, **where: str) -> list[dict[str, Any]]:
        """Audit entries (details parsed) matching ``where`` (e.g. action=...)."""
        found = []
        for entry in self.audit.entries():
            row = {
                "seq": entry.seq,
                "actor": entry.actor,
                "role": entry.role,
                "action": entry.action,
                "target": entry.target,
                "outcome": entry.outcome,
                "details": dict(entry.details),
            }
            if all(row[key] == value for key, value in where.items()):
                found.append(row)
        return found

    def raw_audit_text(self) -> str:
        """Every stored audit column as one text, to search for values that must be absent."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT actor, role, action, target, outcome, details FROM audit_entries")
            ).all()
        return "\n".join("\t".join(str(value) for value in row) for row in rows)


def make_deployment(root: Path, url: str | None = None) -> Deployment:
    """A fresh SQLite registry under ``root`` with users of every role (password PASSWORD).

    Two admins: ada adds every user, adam approves the privileged ones (and their tokens),
    as the registry's two-person rule requires.
    """
    root.mkdir(parents=True, exist_ok=True)
    engine = create_database_engine(url or f"sqlite:///{root / 'countyfl.db'}")
    upgrade(engine)
    audit = AuditLog(engine)
    bootstrap_admin(engine, ADMIN.username, password=PASSWORD, audit=audit)
    add_user(
        engine, SECOND_ADMIN.username, Role.ADMIN, password=PASSWORD, principal=ADMIN, audit=audit
    )
    for principal in (RESEARCHER, CLINICIAN, AUDITOR, REGULATOR, SECOND_REGULATOR, NODE):
        created = add_user(
            engine,
            principal.username,
            principal.role,
            password=PASSWORD,
            principal=ADMIN,
            audit=audit,
        )
        if created.pending_approval:
            approve_user(engine, principal.username, principal=SECOND_ADMIN, audit=audit)
    deployment = Deployment(root, engine, audit)
    for principal in (CLINICIAN, NODE):
        issued = create_api_token(
            engine, principal.username, name="tests", principal=ADMIN, audit=audit
        )
        if issued.token.pending_approval:
            approve_api_token(engine, issued.token.id, principal=SECOND_ADMIN, audit=audit)
        deployment.api_tokens[principal.username] = issued.secret.get_secret_value()
    return deployment


@dataclass
class LiveServer:
    """A uvicorn server running an app in a thread on 127.0.0.1."""

    base_url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
