"""Fixtures of the audit tests: a migrated database on SQLite and on PostgreSQL, a key pair."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_testing import DatabaseSpec, postgres_unreachable_reason, temporary_database
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from countyfl.audit import AuditLog


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseSpec]:
    """A fresh, migrated audit database on each backend (PostgreSQL skipped with a reason)."""
    if request.param == "postgresql" and (reason := postgres_unreachable_reason()):
        pytest.skip(reason)
    with temporary_database(request.param, str(tmp_path)) as spec:
        yield spec


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[DatabaseSpec]:
    """A fresh, migrated audit database on SQLite only."""
    with temporary_database("sqlite", str(tmp_path)) as spec:
        yield spec


@pytest.fixture
def engine(database: DatabaseSpec) -> Iterator[Engine]:
    engine = database.create_engine()
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: Engine) -> AuditLog:
    return AuditLog(engine)


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
