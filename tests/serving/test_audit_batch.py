"""Group commit of audit entries: durable on return, one failure per cause, a valid chain."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from countyfl.audit import AuditEntryInvalidError, AuditLog, AuditWriteError
from countyfl.serving.audit_batch import BatchingAuditLog, _Pending
from countyfl.storage import create_database_engine, upgrade


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def fields(number: int, action: str = "model.predict") -> dict[str, Any]:
    return {
        "actor": f"user-{number}",
        "role": "clinician",
        "action": action,
        "target": "model:m:v1",
        "outcome": "ok",
        "details": {"n": number},
    }


def test_concurrent_appends_all_land_in_one_valid_chain(engine: Engine) -> None:
    sink = BatchingAuditLog(AuditLog(engine))
    results: dict[int, int] = {}
    start = threading.Barrier(24)

    def append(number: int) -> None:
        start.wait()
        results[number] = sink.append(**fields(number)).seq

    threads = [threading.Thread(target=append, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    assert sorted(results.values()) == list(range(1, 25))
    stored = {entry.seq: entry.actor for entry in AuditLog(engine).entries()}
    assert all(stored[seq] == f"user-{n}" for n, seq in results.items())
    assert AuditLog(engine).verify().ok


def test_invalid_entry_fails_alone(engine: Engine) -> None:
    sink = BatchingAuditLog(AuditLog(engine))
    batch = [_Pending(fields(1)), _Pending(fields(2, action="Not An Action")), _Pending(fields(3))]
    sink._write(batch)
    assert batch[0].future.result().seq == 1
    with pytest.raises(AuditEntryInvalidError):
        batch[1].future.result()
    assert batch[2].future.result().seq == 2
    assert AuditLog(engine).verify().ok


def test_a_failed_commit_fails_every_entry_of_the_batch(engine: Engine) -> None:
    sink = BatchingAuditLog(AuditLog(engine))
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_head"))
    batch = [_Pending(fields(1)), _Pending(fields(2))]
    sink._write(batch)
    for pending in batch:
        with pytest.raises(AuditWriteError):
            pending.future.result()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_entries")).scalar() == 0


def test_commits_are_full_sync_and_the_pool_keeps_normal(engine: Engine) -> None:
    seen: list[int] = []

    @event.listens_for(engine, "commit")
    def before_commit(connection: Any) -> None:
        driver = connection.connection.driver_connection
        seen.append(driver.execute("PRAGMA synchronous").fetchone()[0])

    sink = BatchingAuditLog(AuditLog(engine))
    sink.append(**fields(1))
    sink.close()
    assert seen == [2]  # FULL
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_closed_sink_refuses(engine: Engine) -> None:
    sink = BatchingAuditLog(AuditLog(engine))
    sink.append(**fields(1))
    sink.close()
    with pytest.raises(AuditWriteError, match="shutting down"):
        sink.append(**fields(2))
