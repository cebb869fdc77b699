"""Group commit for the API's audit entries: concurrent appends share one durable commit.

Every answered request writes an audit entry, durably, before its answer leaves. Written
one by one, each entry is its own transaction and its own disk sync, and the syncs of
concurrent requests queue behind one another. Here one writer thread takes every entry
that is waiting, writes them with :meth:`countyfl.audit.AuditLog.append_in` inside one
transaction and commits once; each request gets its entry back only after that commit, so
an entry is still durable when ``append`` returns. On SQLite the commit runs with
``synchronous=FULL``, as ``AuditLog.append`` does, so that it survives a power loss.

If the commit fails, every entry of the batch fails with ``AuditWriteError`` and each of
those requests is refused; an entry that is invalid by itself fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from countyfl.audit import AuditEntry, AuditLog, AuditWriteError
from countyfl.audit.errors import AuditEntryInvalidError

logger = logging.getLogger(__name__)

MAX_BATCH = 256
"""Most entries in one commit."""
WAIT_SECONDS = 60.0
"""How long a request waits for its entry before it is refused."""
_SQLITE_FULL_SYNC = 2


@dataclass
class _Pending:
    fields: dict[str, Any]
    future: Future[AuditEntry] = field(default_factory=Future)


class BatchingAuditLog:
    """An audit sink over an :class:`~countyfl.audit.AuditLog` that commits in batches.

    Parameters
    ----------
    log : AuditLog
        The audit log to write to (its engine is used for the batch transactions).
    max_batch : int
        Most entries per commit.
    """

    def __init__(self, log: AuditLog, *, max_batch: int = MAX_BATCH) -> None:
        self._log = log
        self._max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def log(self) -> AuditLog:
        """The underlying audit log."""
        return self._log

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        details: Mapping[str, object] | None = None,
    ) -> AuditEntry:
        """Append one entry; it is committed when this returns (see the module docstring).

        Raises
        ------
        AuditWriteError
            If the entry is invalid, its batch could not be committed, the writer did not
            answer within :data:`WAIT_SECONDS`, or the sink is closed.
        """
        pending = _Pending(
            {
                "actor": actor,
                "role": role,
                "action": action,
                "target": target,
                "outcome": outcome,
                "details": dict(details or {}),
            }
        )
        with self._guard:
            if self._closed:
                raise AuditWriteError(
                    f"audit entry {action!r} by {actor!r} not written: the service is shutting "
                    "down; the action must not go ahead"
                )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="countyfl-audit-writer", daemon=True
                )
                self._thread.start()
            self._queue.put(pending)
        try:
            return pending.future.result(timeout=WAIT_SECONDS)
        except FutureTimeout:
            raise AuditWriteError(
                f"audit entry {action!r} by {actor!r} was not confirmed within "
                f"{WAIT_SECONDS:g} s; the action must not go ahead. Check the database"
            ) from None

    def reopen(self) -> None:
        """Accept entries again after :meth:`close` (an app started again, e.g. in tests)."""
        with self._guard:
            if self._closed:
                self._closed = False
                self._thread = None  # the old writer has returned after the close marker

    def close(self) -> None:
        """Write what is waiting, then stop the writer thread."""
        with self._guard:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout=WAIT_SECONDS)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._write(batch)
            except BaseException as error:  # never leave a request waiting
                failure = AuditWriteError(
                    f"{len(batch)} audit entries could not be written ({type(error).__name__}); "
                    "the actions must not go ahead"
                )
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(failure)
                logger.error("audit batch failed: %s", type(error).__name__)
            if stop:
                return

    def _write(self, batch: list[_Pending]) -> None:
        written: list[tuple[_Pending, AuditEntry]] = []
        try:
            with (
                self._log.engine.connect() as connection,
                self._durable(connection),
                Session(bind=connection) as session,
            ):
                for pending in batch:
                    try:
                        entry = self._log.append_in(session, **pending.fields)
                    except AuditEntryInvalidError as error:  # refused before any SQL ran
                        pending.future.set_exception(error)
                        continue
                    written.append((pending, entry))
                session.commit()
        except AuditWriteError as error:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        except Exception as error:
            failure = AuditWriteError(
                f"{len(written)} audit entries could not be committed to "
                f"{self._log.engine.url.render_as_string(hide_password=True)} "
                f"({type(error).__name__}); the actions must not go ahead"
            )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        for pending, entry in written:
            pending.future.set_result(entry)

    @contextmanager
    def _durable(self, connection: Connection) -> Iterator[None]:
        """On SQLite, commit with synchronous=FULL (the engine runs NORMAL), then restore it.

        Set on the driver's connection, which this batch holds until the block ends, so the
        setting never leaks to another user of the pool.
        """
        if self._log.engine.dialect.name != "sqlite":
            yield
            return
        driver: Any = connection.connection.driver_connection
        previous = driver.execute("PRAGMA synchronous").fetchone()[0]
        driver.execute(f"PRAGMA synchronous={_SQLITE_FULL_SYNC}")
        try:
            yield
        finally:
            driver.execute(f"PRAGMA synchronous={int(previous)}")
