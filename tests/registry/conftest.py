"""Fixtures of the registry tests: each database test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_support import (
    ADMIN,
    BACKENDS,
    PEOPLE,
    SECOND_ADMIN,
    RecordingSink,
    database_url,
    migrated_engine,
    seed_users,
)
from sqlalchemy import Engine


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that uses a database runs once on SQLite and once on PostgreSQL."""
    name: str = request.param
    return name


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``backend`` (not migrated)."""
    with database_url(backend, tmp_path) as url:
        yield url


@pytest.fixture
def empty_engine(db_url: str) -> Iterator[Engine]:
    """A database with the registry's tables (migrated to the heads) and no user."""
    engine = migrated_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """A migrated database whose only users are the two admins, ada and adam."""
    seed_users(empty_engine, ADMIN, SECOND_ADMIN)
    return empty_engine


@pytest.fixture
def people(engine: Engine) -> Engine:
    """:func:`engine` with a user of every role too (rita, chen, aude, reg, rex, county-node)."""
    seed_users(engine, *PEOPLE)
    return engine


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()
