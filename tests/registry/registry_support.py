"""Helpers of the registry tests: databases (SQLite and PostgreSQL), a recording sink, artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from countyfl.registry import EvaluationData, Principal, Role, evaluation_data
from countyfl.registry.tables import UserRow
from countyfl.registry.timestamps import utc_now
from countyfl.storage import create_database_engine, session_factory, upgrade

POSTGRES_URL = os.environ.get(
    "COUNTYFL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REGISTRY_REVISION = "heads"
BACKENDS = ["sqlite", "postgresql"]

_ACTION = re.compile(r"[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*")


@cache
def postgres_unreachable_reason() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return (
            f"PostgreSQL at {POSTGRES_URL} is unreachable ({first_line}); start it or point "
            "COUNTYFL_TEST_POSTGRES_URL at one to run the PostgreSQL half of these tests"
        )
    return None


@dataclass
class PostgresSchema:
    """A throwaway schema on the test server, and URLs whose search_path points at it."""

    name: str

    @property
    def url(self) -> str:
        """A SQLAlchemy URL whose connections use only this schema."""
        return (
            make_url(POSTGRES_URL)
            .update_query_dict({"options": f"-csearch_path={self.name}"})
            .render_as_string(hide_password=False)
        )


@cache
def _admin_engine() -> Engine:
    return create_database_engine(POSTGRES_URL)


def create_schema() -> PostgresSchema:
    """Create a fresh schema (skipping the test, with the reason, if PostgreSQL is down)."""
    reason = postgres_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    schema = PostgresSchema(f"registry_test_{uuid.uuid4().hex[:12]}")
    with _admin_engine().begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema.name}"'))
    return schema


def drop_schema(schema: PostgresSchema) -> None:
    with _admin_engine().begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema.name}" CASCADE'))


@contextmanager
def database_url(backend: str, folder: Path) -> Iterator[str]:
    """A database URL of ``backend`` (PostgreSQL: a fresh schema, dropped on exit)."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'registry.db'}"
        return
    schema = create_schema()
    try:
        yield schema.url
    finally:
        drop_schema(schema)


def migrated_engine(url: str, revision: str = REGISTRY_REVISION) -> Engine:
    engine = create_database_engine(url)
    upgrade(engine, revision)
    return engine


@dataclass
class RecordingSink:
    """An audit sink that keeps entries in memory and checks them as the real log does."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        details: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        assert actor.strip() and role.strip(), "an audit entry names its actor and role"
        assert _ACTION.fullmatch(action), f"audit action {action!r} is not dotted kebab-case"
        assert outcome in {"ok", "refused", "failed"}, outcome
        # The real log stores canonical JSON and refuses NaN; so does this one.
        canonical = json.dumps(dict(details or {}), sort_keys=True, allow_nan=False)
        entry = {
            "actor": actor,
            "role": role,
            "action": action,
            "target": target,
            "outcome": outcome,
            "details": json.loads(canonical),
        }
        self.entries.append(entry)
        return entry

    def of(self, action: str, outcome: str | None = None) -> list[dict[str, Any]]:
        """The entries of ``action`` (and ``outcome``), oldest first."""
        return [
            entry
            for entry in self.entries
            if entry["action"] == action and (outcome is None or entry["outcome"] == outcome)
        ]

    @property
    def last(self) -> dict[str, Any]:
        return self.entries[-1]


ADMIN = Principal("ada", Role.ADMIN)
SECOND_ADMIN = Principal("adam", Role.ADMIN)
RESEARCHER = Principal("rita", Role.RESEARCHER)
CLINICIAN = Principal("chen", Role.CLINICIAN)
AUDITOR = Principal("aude", Role.AUDITOR)
REGULATOR = Principal("reg", Role.REGULATOR)
SECOND_REGULATOR = Principal("rex", Role.REGULATOR)
NODE = Principal("county-node", Role.NODE)

PEOPLE = (RESEARCHER, CLINICIAN, AUDITOR, REGULATOR, SECOND_REGULATOR, NODE)
"""Everyone but the two admins, as seeded by :func:`seed_users`."""

INSTITUTIONS = ["county-hospital", "township-1", "village-1"]
FEATURES: dict[str, Any] = {
    "schema": "heart-disease",
    "names": ["age", "resting-bp", "cholesterol"],
    "mean": [54.0, 132.0, 220.0],
    "scale": [9.0, 18.0, 50.0],
}
"""A small input transform: three raw features, standardised as (raw - mean) / scale."""


def seed_users(engine: Engine, *principals: Principal, password_hash: str | None = None) -> None:
    """Put enabled, approved users into the registry directly (a fixture, not an admin).

    The registry refuses to act for principals that are not live users; tests of what a
    role may do need those users to exist, whatever the approval process they came by
    (which ``test_users_and_tokens`` and ``test_two_people`` test on their own).
    """
    with session_factory(engine)() as session:
        for principal in principals:
            session.add(
                UserRow(
                    username=principal.username,
                    role=principal.role.value,
                    password_hash=password_hash,
                    disabled=False,
                    created_at=utc_now(),
                    token_version=0,
                    pending_approval=False,
                )
            )
        session.commit()


def model_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The (weight, bias) of a small logistic regression over :data:`FEATURES`."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(1, len(FEATURES["names"]))).astype(np.float32)
    return weight + np.sign(weight) * 0.5, rng.normal(size=(1,)).astype(np.float32) * 0.1


def write_artifact(path: Path, seed: int = 0, **replace: np.ndarray) -> str:
    """Write the state dict of :func:`model_weights` as ``.npz`` at ``path``; its sha256."""
    weight, bias = model_weights(seed)
    arrays = {"linear.weight": weight, "linear.bias": bias, **replace}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        np.savez(stream, **arrays)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def heldout(seed: int = 0, *, rows: int = 200, flip: float = 0.1) -> EvaluationData:
    """Held-out rows in raw units that the model of ``seed`` separates well (AUC ~0.9).

    Labels are the model's own decisions with a share ``flip`` of them turned over; with
    ``flip=0.5`` they are coin tosses, and the model does no better than chance.
    """
    rng = np.random.default_rng(1000 + seed)
    mean, scale = np.array(FEATURES["mean"]), np.array(FEATURES["scale"])
    z = rng.normal(size=(rows, len(FEATURES["names"])))
    weight, bias = model_weights(seed)
    decided = (z @ weight[0].astype(np.float64) + float(bias[0])) > 0
    turned = rng.random(rows) < flip
    labels = np.where(turned, ~decided, decided).astype(np.float64)
    return evaluation_data(FEATURES["names"], z * scale + mean, labels, source=f"heldout-{seed}")


def lineage(
    folder: Path, *, name: str = "heart-disease-diagnosis", auc: float = 0.82, seed: int = 0
) -> dict[str, Any]:
    """Keyword arguments of ``register_candidate`` for a small three-institution run."""
    artifact = folder / f"{name}-{seed}-{uuid.uuid4().hex[:6]}.npz"
    sha = write_artifact(artifact, seed)
    return {
        "name": name,
        "architecture": "diagnosis-logreg",
        "run_id": f"run-{seed}",
        "scenario": "framingham-county",
        "rounds": 5,
        "institutions": INSTITUTIONS,
        "federated_metrics": {"auc": auc, "accuracy": 0.74},
        "institution_metrics": {
            "county-hospital": {"auc": 0.85},
            "township-1": {"auc": 0.8},
            "village-1": {"auc": float("nan")},
        },
        "privacy": {
            "county-hospital": {"epsilon": 0.9, "delta": 1e-3},
            "township-1": {"epsilon": 1.4, "delta": 1e-3},
            "village-1": {"epsilon": 2.5, "delta": 1e-3},
        },
        "encryption": {"scheme": "ckks", "poly-modulus-degree": 8192},
        "task_manifest_hash": "ab" * 32,
        "artifact_location": artifact,
        "artifact_sha256": sha,
        "features": FEATURES,
    }


def publish_folder(folder: Path, **overrides: Any) -> Path:
    """Write a folder as ``countyfl model publish`` does; ``overrides`` replace model.json keys."""
    folder.mkdir(parents=True, exist_ok=True)
    sha = write_artifact(folder / "model.npz")
    manifest: dict[str, Any] = {
        "name": "heart-disease-diagnosis",
        "model": "diagnosis-logreg",
        "run_id": "run-42",
        "scenario": "fed-heart-disease",
        "task_manifest_hash": "cd" * 32,
        "rounds": 15,
        "institutions": ["cleveland", "hungary"],
        "privacy": {
            "cleveland": {"epsilon": 0.95, "delta": 0.001},
            "hungary": {"epsilon": 1.1, "delta": 0.001},
        },
        "encryption": None,
        "metrics": {
            "federated": {"auc": 0.84, "accuracy": 0.77},
            "per_institution": {"cleveland": {"auc": 0.86}, "hungary": {"auc": 0.81}},
        },
        "artifact": {"path": "model.npz", "sha256": sha},
        "created_at": "2026-11-28T10:00:00+00:00",
        "features": FEATURES,
    }
    manifest.update(overrides)
    (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return folder
