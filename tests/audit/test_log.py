"""AuditLog on SQLite and PostgreSQL: durable appends, reading, export, checkpoints, schema."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from audit_testing import (
    DatabaseSpec,
    drop_append_only_guards,
    execute,
    fill,
    stored_rows,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError

from countyfl.audit import (
    GENESIS,
    AuditEntryInvalidError,
    AuditError,
    AuditLog,
    AuditReadError,
    AuditTamperedError,
    AuditWriteError,
    ChainHead,
    Outcome,
    hash_entry,
    read_exported_entries,
    verify_chain,
)
from countyfl.audit.chain import ENTRY_FIELDS
from countyfl.storage import Base, create_database_engine, session_factory


class StepClock:
    """Entry times one second apart from a fixed start."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def test_append_returns_the_stored_entry_with_its_hash(log: AuditLog) -> None:
    entry = log.append(
        actor="dr-ölund",
        role="regulator",
        action="model.promote",
        target="model:heart-disease-diagnosis:v3",
        outcome="ok",
        details={"from": "candidate", "to": "production"},
    )
    assert (entry.seq, entry.prev_hash, entry.outcome) == (1, GENESIS.entry_hash, Outcome.OK)
    assert entry.details == {"from": "candidate", "to": "production"}
    assert entry.recorded_at.tzinfo is UTC
    assert entry.entry_hash == hash_entry(*entry.to_row()[:9])
    assert stored_rows(log.engine) == [entry.to_row()]


def test_an_appended_entry_is_committed_when_append_returns(
    log: AuditLog, database: DatabaseSpec
) -> None:
    entry = log.append(actor="alice", role="clinician", action="login", target="", outcome="ok")
    other = database.create_engine()  # a separate engine: only committed data is visible
    try:
        assert stored_rows(other) == [entry.to_row()]
        assert AuditLog(other).head() == ChainHead(1, entry.entry_hash)
    finally:
        other.dispose()


def test_appends_chain_gaplessly_and_the_head_follows(log: AuditLog) -> None:
    entries = [
        log.append(actor="node-a", role="node", action="run.started", target="run:1", outcome=o)
        for o in ("ok", "refused", "failed")
    ]
    assert [entry.seq for entry in entries] == [1, 2, 3]
    assert [entry.prev_hash for entry in entries[1:]] == [e.entry_hash for e in entries[:2]]
    assert log.head() == ChainHead(3, entries[-1].entry_hash)
    result = log.verify()
    assert result.ok and result.entries_checked == 3


def test_an_invalid_entry_writes_nothing(log: AuditLog) -> None:
    with pytest.raises(AuditEntryInvalidError, match="outcome 'maybe'"):
        log.append(actor="alice", role="clinician", action="login", target="", outcome="maybe")
    assert stored_rows(log.engine) == []
    assert log.head() == GENESIS


def test_append_on_an_unmigrated_database_raises_audit_write_error(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(AuditWriteError, match=r"could not be written to sqlite.*no such table"):
            AuditLog(engine).append(
                actor="alice", role="clinician", action="prediction", target="m", outcome="ok"
            )
        with pytest.raises(AuditReadError, match="cannot be read"):
            AuditLog(engine).verify()
    finally:
        engine.dispose()


def test_append_to_an_unreachable_database_raises_audit_write_error() -> None:
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    engine = create_database_engine(
        "postgresql://nobody:secret-password@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    try:
        with pytest.raises(AuditWriteError, match="must not go ahead") as raised:
            AuditLog(engine).append(
                actor="alice",
                role="clinician",
                action="prediction",
                target="m",
                outcome="ok",
                details={"patient": "never in messages"},
            )
    finally:
        engine.dispose()
    assert "secret-password" not in str(raised.value)
    assert "never in messages" not in str(raised.value)


def test_append_while_another_process_holds_the_write_lock_fails_cleanly(
    sqlite_database: DatabaseSpec,
) -> None:
    engine = sqlite_database.create_engine()

    @event.listens_for(engine, "connect")
    def short_wait(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=200")

    path = sqlite_database.url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AuditWriteError, match="database is locked"):
            AuditLog(engine).append(
                actor="alice", role="clinician", action="prediction", target="m", outcome="ok"
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    log = AuditLog(engine)
    entry = log.append(
        actor="alice", role="clinician", action="prediction", target="m", outcome="ok"
    )
    assert entry.seq == 1  # the failed append left no gap
    engine.dispose()


def test_sqlite_appends_commit_with_full_sync_and_leave_the_connection_as_it_was(
    sqlite_database: DatabaseSpec,
) -> None:
    engine = sqlite_database.create_engine()
    statements: list[str] = []

    @event.listens_for(engine, "connect")
    def trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    fill(AuditLog(engine), 1)
    with engine.connect() as connection:  # the pool's one connection, which appended
        after = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    engine.dispose()
    appended = statements[statements.index("PRAGMA synchronous=2") :]
    assert appended[1] == "BEGIN IMMEDIATE"  # the write lock before the head is read
    assert appended.index("COMMIT") < appended.index("PRAGMA synchronous=1")
    assert after == 1  # NORMAL again, as the shared engine configures it


def test_sqlite_appends_work_whatever_transaction_mode_the_engine_uses(
    sqlite_database: DatabaseSpec,
) -> None:
    """The SQLAlchemy recipe for SQLite (pysqlite autocommit, BEGIN on begin) works too."""
    engine = sqlite_database.create_engine()

    @event.listens_for(engine, "connect")
    def autocommit(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    log = AuditLog(engine)
    fill(log, 3)
    with session_factory(engine)() as session:
        log.append_in(session, actor="bob", role="admin", action="login", target="", outcome="ok")
        session.commit()
    result = log.verify()
    engine.dispose()
    assert result.ok and result.entries_checked == 4


def test_append_in_commits_with_the_callers_transaction(log: AuditLog) -> None:
    sessions = session_factory(log.engine)
    with sessions() as session:
        entry = log.append_in(
            session, actor="bob", role="admin", action="user.manage", target="user:c", outcome="ok"
        )
        session.commit()
    assert stored_rows(log.engine) == [entry.to_row()]
    with sessions() as session:
        log.append_in(
            session, actor="bob", role="admin", action="user.manage", target="user:d", outcome="ok"
        )
        session.rollback()
    assert log.head() == ChainHead(1, entry.entry_hash)
    assert log.append(actor="bob", role="admin", action="login", target="", outcome="ok").seq == 2
    assert log.verify().ok


def test_entries_can_be_read_since_a_time_and_limited(engine: Engine) -> None:
    log = AuditLog(engine, clock=StepClock(datetime(2026, 11, 28, 9, tzinfo=UTC)))
    fill(log, 5)
    since = datetime(2026, 11, 28, 9, 0, 3, tzinfo=UTC)
    assert [entry.seq for entry in log.entries(since=since)] == [3, 4, 5]
    assert [entry.seq for entry in log.entries(after_seq=1, limit=2)] == [2, 3]


def test_export_writes_every_field_and_the_export_verifies(engine: Engine) -> None:
    log = AuditLog(engine, clock=StepClock(datetime(2026, 11, 28, 9, tzinfo=UTC)))
    fill(log, 4)
    out = io.StringIO()
    assert log.export_entries(None, out) == 4
    lines = out.getvalue().splitlines()
    first = json.loads(lines[0])
    assert list(first) == list(ENTRY_FIELDS)
    assert first["recorded_at"] == "2026-11-28T09:00:01.000000Z"
    assert json.loads(first["details"]) == {"request": 0}
    assert verify_chain(read_exported_entries(lines)).ok

    partial = io.StringIO()
    assert log.export_entries(datetime(2026, 11, 28, 9, 0, 3, tzinfo=UTC), partial) == 2
    rows = list(read_exported_entries(partial.getvalue().splitlines()))
    assert [row[0] for row in rows] == [3, 4]
    assert verify_chain(rows, anchor=ChainHead(2, rows[0][8])).ok


def test_a_checkpoint_is_stored_returned_and_exported(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    fill(log, 3)
    checkpoint = log.checkpoint(signing_key)
    assert (checkpoint.seq, checkpoint.entry_hash) == (3, log.head().entry_hash)
    assert log.checkpoints() == [checkpoint]
    out = io.StringIO()
    assert log.export_checkpoints(out) == 1
    assert json.loads(out.getvalue())["signature"] == checkpoint.signature
    result = log.verify(public_keys=[signing_key.public_key()])
    assert result.ok and result.checkpoints_verified == 1


def test_checkpointing_an_empty_log_is_refused(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(AuditError, match="empty"):
        log.checkpoint(signing_key)


def test_a_checkpoint_is_not_signed_over_a_broken_chain(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    fill(log, 3)
    log.checkpoint(signing_key)
    fill(log, 3)
    drop_append_only_guards(log.engine)
    execute(log.engine, "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 5")
    with pytest.raises(AuditTamperedError, match="entry 5 was changed") as raised:
        log.checkpoint(signing_key)
    assert not raised.value.result.ok
    assert len(log.checkpoints()) == 1


def test_a_checkpoint_is_not_signed_after_the_previous_one_was_invalidated(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    fill(log, 4)
    log.checkpoint(signing_key)
    rows = stored_rows(log.engine)
    drop_append_only_guards(log.engine)
    execute(log.engine, "DELETE FROM audit_entries WHERE seq = 4")
    execute(log.engine, "UPDATE audit_head SET seq = 3, entry_hash = ? WHERE id = 1", [rows[2][9]])
    with pytest.raises(AuditTamperedError, match="entry 4 is missing"):
        log.checkpoint(signing_key)


def test_entries_and_checkpoints_cannot_be_updated_or_deleted(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    fill(log, 2)
    log.checkpoint(signing_key)
    for sql in (
        "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 1",
        "DELETE FROM audit_entries WHERE seq = 2",
        "UPDATE audit_checkpoints SET seq = 1",
        "DELETE FROM audit_checkpoints",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            execute(log.engine, sql)
    assert log.verify(public_keys=[signing_key.public_key()]).ok


def test_the_tables_match_the_migration(engine: Engine) -> None:
    import countyfl.audit.tables  # noqa: F401  (registers the tables on Base)

    def audit_only(obj: object, name: str | None, type_: str, *_: object) -> bool:
        table = getattr(obj, "table", obj)
        table_name = getattr(table, "name", name) or ""
        return table_name.startswith("audit_")

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_object": audit_only, "compare_type": True}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


@pytest.fixture
def two_logs(database: DatabaseSpec) -> Iterator[tuple[AuditLog, AuditLog]]:
    engines = [database.create_engine(), database.create_engine()]
    yield AuditLog(engines[0]), AuditLog(engines[1])
    for engine in engines:
        engine.dispose()


def test_two_engines_interleaving_appends_share_one_chain(
    two_logs: tuple[AuditLog, AuditLog],
) -> None:
    first, second = two_logs
    for _ in range(5):
        first.append(actor="a", role="node", action="run.started", target="", outcome="ok")
        second.append(actor="b", role="node", action="run.started", target="", outcome="ok")
    result = first.verify()
    assert result.ok and result.entries_checked == 10
