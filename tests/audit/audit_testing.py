"""Helpers of the audit tests: databases on both backends, tampering behind the log's back.

Kept out of conftest.py so that worker processes (spawned, so they import this module
afresh) get the helpers without importing pytest fixtures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Engine

from countyfl.audit.chain import GENESIS_HASH, EntryRow, hash_entry
from countyfl.audit.log import AuditLog
from countyfl.storage import create_database_engine, session_factory, upgrade

POSTGRES_URL = os.environ.get(
    "COUNTYFL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
AUDIT_REVISION = "0002_audit_log"
COLUMNS = "seq, recorded_at, actor, role, action, target, outcome, details, prev_hash, entry_hash"


@cache
def postgres_unreachable_reason() -> str | None:
    """None when PostgreSQL answers at POSTGRES_URL, else why not (once per process)."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return (
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({first_line}); start it or set "
            "COUNTYFL_TEST_POSTGRES_URL"
        )
    return None


@dataclass(frozen=True)
class DatabaseSpec:
    """Enough to open the same test database in another process."""

    backend: str
    url: str
    schema: str | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        if self.schema is None:
            return {}
        return {"connect_args": {"options": f"-csearch_path={self.schema}"}}

    def create_engine(self) -> Engine:
        return create_database_engine(self.url, **self.engine_kwargs())

    def cli_url(self) -> str:
        """The URL with the schema in it, for commands that only take a URL."""
        if self.schema is None:
            return self.url
        return f"{self.url}?options=-csearch_path%3D{self.schema}"


@contextmanager
def temporary_database(backend: str, directory: str) -> Iterator[DatabaseSpec]:
    """A fresh, migrated audit database: a SQLite file, or a PostgreSQL schema dropped after."""
    if backend == "sqlite":
        spec = DatabaseSpec("sqlite", f"sqlite:///{directory}/audit-{uuid.uuid4().hex[:8]}.db")
        engine = spec.create_engine()
        try:
            upgrade(engine, AUDIT_REVISION)
        finally:
            engine.dispose()
        yield spec
        return
    import psycopg

    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        spec = DatabaseSpec("postgresql", POSTGRES_URL, schema)
        engine = spec.create_engine()
        try:
            upgrade(engine, AUDIT_REVISION)
        finally:
            engine.dispose()
        yield spec
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


def drop_append_only_guards(engine: Engine) -> None:
    """Drop the triggers that refuse UPDATE/DELETE, as an attacker with DDL rights would."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for table in ("audit_entries", "audit_checkpoints"):
                for event in ("update", "delete"):
                    connection.exec_driver_sql(f"DROP TRIGGER {table}_no_{event}")
        else:
            for table in ("audit_entries", "audit_checkpoints"):
                connection.exec_driver_sql(f"DROP TRIGGER {table}_append_only ON {table}")


def execute(engine: Engine, sql: str, parameters: Sequence[Any] | None = None) -> None:
    """Run one raw SQL statement (``?`` placeholders) in its own transaction."""
    if engine.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    with engine.begin() as connection:
        if parameters is None:
            connection.exec_driver_sql(sql)
        else:
            connection.exec_driver_sql(sql, tuple(parameters))


def stored_rows(engine: Engine) -> list[EntryRow]:
    """Every stored entry row, in seq order."""
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"SELECT {COLUMNS} FROM audit_entries ORDER BY seq").all()
    return [tuple(row) for row in rows]


def rehash(rows: Sequence[EntryRow], *, start: int = 0) -> list[EntryRow]:
    """``rows`` with every prev_hash and entry_hash from index ``start`` on recomputed."""
    result = list(rows[:start])
    prev = result[-1][9] if result else GENESIS_HASH
    for row in rows[start:]:
        fields = (*row[:8], prev)
        sealed = (*fields, hash_entry(*fields))
        result.append(sealed)
        prev = sealed[9]
    return result


def replace_chain(engine: Engine, rows: Sequence[EntryRow], *, move_head: bool = True) -> None:
    """Replace every stored entry by ``rows`` (and the head by their end) behind the log's back."""
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM audit_entries")
        if rows:
            connection.exec_driver_sql(
                f"INSERT INTO audit_entries ({COLUMNS}) VALUES ({', '.join([mark] * 10)})",
                [tuple(row) for row in rows],
            )
        if move_head:
            last = rows[-1] if rows else (0, "", "", "", "", "", "", "", "", GENESIS_HASH)
            connection.exec_driver_sql(
                f"UPDATE audit_head SET seq = {mark}, entry_hash = {mark} WHERE id = 1",
                (last[0], last[9]),
            )


def edit_rows(
    rows: Sequence[EntryRow], seq: int, change: Callable[[EntryRow], EntryRow]
) -> list[EntryRow]:
    """``rows`` with the row of ``seq`` replaced by ``change(row)``."""
    return [change(row) if row[0] == seq else row for row in rows]


def fill(log: AuditLog, count: int, *, actor: str = "alice") -> None:
    """Append ``count`` ordinary entries."""
    for number in range(count):
        log.append(
            actor=actor,
            role="clinician",
            action="prediction",
            target="model:heart-disease-diagnosis:v1",
            outcome="ok",
            details={"request": number},
        )


def append_many(spec: DatabaseSpec, worker: int, count: int, barrier: Any) -> None:
    """Worker process: wait for the others, then append ``count`` entries as fast as it can.

    Odd workers append inside their own session's transaction (``append_in``), even ones
    with ``append``, so that both paths contend for the head.
    """
    engine = spec.create_engine()
    sessions = session_factory(engine)
    try:
        log = AuditLog(engine)
        barrier.wait()
        for number in range(count):
            fields: dict[str, Any] = {
                "actor": f"node-{worker}",
                "role": "node",
                "action": "round.reply-rejected",
                "target": f"run:{worker}",
                "outcome": "refused",
                "details": {"worker": worker, "number": number},
            }
            if worker % 2:
                with sessions() as session:
                    log.append_in(session, **fields)
                    session.commit()
            else:
                log.append(**fields)
    finally:
        engine.dispose()
