"""What the audit log costs: durable appends per second, and verifying a long chain.

Measured side by side in one run, on SQLite (a temporary file, WAL) and on PostgreSQL (a
temporary schema; skipped with a message when it is unreachable):
  1. durable appends per second: one writer, every ``AuditLog.append`` its own committed
     transaction (SQLite commits audit entries with synchronous=FULL);
  2. the time ``AuditLog.verify`` takes over a chain of N entries (1,000,000 by default;
     target <= 10 s), hash chain only and with one signed checkpoint checked. The chain is
     built with the pure hash functions and bulk-inserted (not timed).

    python benchmarks/audit.py [--entries 1000000] [--appends 2000]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from countyfl.audit import AuditLog, ChainHead, EntryRow, Outcome
from countyfl.audit.chain import ENTRY_FIELDS, NewEntry, build_chain, format_time
from countyfl.audit.tables import AuditHeadRecord
from countyfl.storage import create_database_engine, upgrade

VERIFY_TARGET_S = 10.0
REVISION = "0002_audit_log"


@dataclass
class Figures:
    backend: str
    appends: int = 0
    append_s: float = float("nan")
    entries: int = 0
    build_s: float = float("nan")
    verify_s: float = float("nan")
    verify_signed_s: float = float("nan")


def synthetic_rows(count: int) -> Iterator[EntryRow]:
    """A valid chain of ``count`` prediction entries, one second apart."""
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def entries() -> Iterator[tuple[NewEntry, str]]:
        for number in range(count):
            new = NewEntry(
                actor=f"clinician-{number % 97}",
                role="clinician",
                action="prediction",
                target="model:heart-disease-diagnosis:v3",
                outcome=Outcome.OK,
                # Canonical JSON written directly (as canonical_details would write it).
                details=f'{{"request":"r-{number:08d}","risk":{(number % 999 + 1) / 1000!r}}}',
            )
            yield new, format_time(start + timedelta(seconds=number))

    return build_chain(entries())


@contextmanager
def sqlite_engine(directory: str) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{directory}/audit-{uuid.uuid4().hex[:8]}.db")
    try:
        upgrade(engine, REVISION)
        yield engine
    finally:
        engine.dispose()


@contextmanager
def postgres_engine(url: str) -> Iterator[Engine]:
    import psycopg

    schema = f"audit_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    engine = create_database_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        upgrade(engine, REVISION)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


def bulk_insert(engine: Engine, rows: Iterator[EntryRow]) -> ChainHead:
    """Insert ``rows`` with the driver's fastest path; move the head to the last one."""
    last: EntryRow | None = None

    def remember() -> Iterator[EntryRow]:
        nonlocal last
        for row in rows:
            last = row
            yield row

    columns = ", ".join(ENTRY_FIELDS)
    raw: Any = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            driver: sqlite3.Connection = raw.driver_connection
            driver.executemany(
                f"INSERT INTO audit_entries ({columns}) VALUES ({', '.join('?' * 10)})",
                remember(),
            )
        else:
            with (
                raw.cursor() as cursor,
                cursor.copy(f"COPY audit_entries ({columns}) FROM STDIN") as copy,
            ):
                for row in remember():
                    copy.write_row(row)
        assert last is not None
        cursor = raw.cursor()
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        cursor.execute(
            f"UPDATE {AuditHeadRecord.__tablename__} SET seq = {mark}, entry_hash = {mark} "
            "WHERE id = 1",
            (last[0], last[9]),
        )
        raw.commit()
    finally:
        raw.close()
    return ChainHead(last[0], last[9])


def measure(
    backend: str,
    open_engine: Callable[[], AbstractContextManager[Engine]],
    entries: int,
    appends: int,
) -> Figures:
    figures = Figures(backend, appends=appends, entries=entries)
    with open_engine() as engine:
        log = AuditLog(engine)
        start = time.perf_counter()
        for number in range(appends):
            log.append(
                actor="dr-ölund",
                role="clinician",
                action="prediction",
                target="model:heart-disease-diagnosis:v3",
                outcome="ok",
                details={"request": f"r-{number:08d}", "risk": 0.25},
            )
        figures.append_s = time.perf_counter() - start

    with open_engine() as engine:
        log = AuditLog(engine)
        start = time.perf_counter()
        head = bulk_insert(engine, synthetic_rows(entries))
        figures.build_s = time.perf_counter() - start
        print(f"  {backend}: built and inserted {entries:,} entries in {figures.build_s:.1f} s")

        start = time.perf_counter()
        result = log.verify()
        figures.verify_s = time.perf_counter() - start
        assert result.ok and result.entries_checked == entries, result.summary()

        key = Ed25519PrivateKey.generate()
        # The first checkpoint verifies the whole chain before signing (not timed here).
        checkpoint = log.checkpoint(key)
        assert checkpoint.seq == head.seq
        start = time.perf_counter()
        result = log.verify(public_keys=[key.public_key()])
        figures.verify_signed_s = time.perf_counter() - start
        assert result.ok and result.checkpoints_verified == 1, result.summary()
    return figures


def postgres_unreachable(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except Exception as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    return None


def print_table(rows: list[Figures]) -> None:
    print()
    print(
        f"{'backend':<11}{'appends/s':>11}{'ms/append':>11}   "
        f"{'verify N':>10}{'chain only':>12}{'+ signed':>10}{'entries/s':>12}{'of 10 s':>9}"
    )
    for row in rows:
        rate = row.appends / row.append_s
        print(
            f"{row.backend:<11}{rate:>11,.0f}{1000 / rate:>11.2f}   "
            f"{row.entries:>10,}{row.verify_s:>11.2f}s{row.verify_signed_s:>9.2f}s"
            f"{row.entries / row.verify_s:>12,.0f}{row.verify_s / VERIFY_TARGET_S:>9.0%}"
        )
    if len(rows) == 2:
        sqlite, postgres = rows
        appends = (postgres.appends / postgres.append_s) / (sqlite.appends / sqlite.append_s)
        verify = postgres.verify_s / sqlite.verify_s
        print(f"\nPostgreSQL / SQLite: appends/s x{appends:.2f}, verify time x{verify:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="chain length to verify")
    parser.add_argument("--appends", type=int, default=2000, help="durable appends to time")
    parser.add_argument(
        "--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL"
    )
    arguments = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as directory:
        print("SQLite (temporary file, WAL):")
        results.append(
            measure(
                "sqlite", lambda: sqlite_engine(directory), arguments.entries, arguments.appends
            )
        )
    reason = postgres_unreachable(arguments.postgres_url)
    if reason is None:
        print(f"PostgreSQL ({arguments.postgres_url}, temporary schema):")
        results.append(
            measure(
                "postgresql",
                lambda: postgres_engine(arguments.postgres_url),
                arguments.entries,
                arguments.appends,
            )
        )
    else:
        print(f"PostgreSQL skipped: {arguments.postgres_url} is not reachable ({reason})")
    print_table(results)


if __name__ == "__main__":
    main()
