"""The audit log over a SQLAlchemy engine: durable serialised appends, verification, export.

Appends are serialised per database so that many processes produce one gapless chain: on
PostgreSQL each append locks the one ``audit_head`` row (``SELECT ... FOR UPDATE``), on SQLite
it opens its transaction with ``BEGIN IMMEDIATE`` (the database's single write lock), waiting
up to the engine's busy timeout. The hash math lives in :mod:`countyfl.audit.chain` and
:mod:`countyfl.audit.verification`; this class only moves rows.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from countyfl.audit.chain import (
    ENTRY_FIELDS,
    AuditEntry,
    ChainHead,
    EntryRow,
    NewEntry,
    format_time,
    seal_entry,
    validate_new_entry,
)
from countyfl.audit.checkpoints import Checkpoint, key_id_of, sign_checkpoint, write_checkpoints
from countyfl.audit.errors import AuditError, AuditReadError, AuditTamperedError, AuditWriteError
from countyfl.audit.tables import (
    HEAD_ROW_ID,
    AuditCheckpointRecord,
    AuditEntryRecord,
    AuditHeadRecord,
)
from countyfl.audit.verification import Problem, ProblemKind, VerificationResult, verify_chain

_ENTRIES = AuditEntryRecord.__table__.c
_HEAD = AuditHeadRecord.__table__.c
_CHECKPOINTS = AuditCheckpointRecord.__table__.c
_STREAM_BATCH = 10_000
_SELECT_ENTRIES = f"SELECT {', '.join(ENTRY_FIELDS)} FROM audit_entries"
_SQLITE_FULL_SYNC = 2
_SQLITE_SELECT_HEAD = f"SELECT seq, entry_hash FROM audit_head WHERE id = {HEAD_ROW_ID}"
_SQLITE_INSERT_ENTRY = (
    f"INSERT INTO audit_entries ({', '.join(ENTRY_FIELDS)}) VALUES ({', '.join('?' * 10)})"
)
_SQLITE_MOVE_HEAD = f"UPDATE audit_head SET seq = ?, entry_hash = ? WHERE id = {HEAD_ROW_ID}"
_MIGRATE_HINT = (
    "check that the database is reachable and migrated (countyfl.storage.upgrade, which every "
    "'countyfl audit' command runs)"
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _reason(error: Exception) -> str:
    """The first line of the driver's message (SQLAlchemy appends SQL and a URL to it)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _checkpoint_of(record: Any) -> Checkpoint:
    return Checkpoint(
        int(record.seq), record.entry_hash, record.signed_at, record.key_id, record.signature
    )


class AuditLog:
    """The append-only, hash-chained audit log stored in ``engine``'s database.

    Parameters
    ----------
    engine : Engine
        From :func:`countyfl.storage.create_database_engine`, migrated with
        :func:`countyfl.storage.upgrade`.
    clock : Callable[[], datetime]
        Source of aware entry times; the system clock in UTC by default.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self._sqlite = engine.dialect.name == "sqlite"
        # Raw DB-API cursors (used for streaming) raise the driver's errors, not SQLAlchemy's.
        self._database_errors: tuple[type[Exception], ...] = (
            SQLAlchemyError,
            engine.dialect.loaded_dbapi.Error,
        )
        self._integrity_errors: tuple[type[Exception], ...] = (
            IntegrityError,
            engine.dialect.loaded_dbapi.IntegrityError,
        )

    @property
    def engine(self) -> Engine:
        """The engine the log reads and writes through."""
        return self._engine

    def _where(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    # ----------------------------------------------------------------------------- append

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
        """Append one entry in its own transaction; it is committed when this returns.

        Parameters
        ----------
        actor : str
            The user name that acted ("system" for the platform itself).
        role : str
            The actor's role.
        action : str
            Dotted kebab-case, e.g. ``model.promote``, ``round.reply-rejected``, ``login``.
        target : str
            What the action was applied to (may be empty).
        outcome : str
            An :class:`~countyfl.audit.chain.Outcome` value: ok, refused or failed.
        details : Mapping[str, object] | None
            JSON-representable facts; stored as canonical JSON. Never put secrets here.

        Returns
        -------
        AuditEntry
            The entry as stored, with its sequence number and hash.

        Raises
        ------
        AuditWriteError
            If the entry is invalid (:class:`~countyfl.audit.errors.AuditEntryInvalidError`)
            or could not be made durable. The audited action must then not go ahead.
        """
        new = validate_new_entry(
            actor=actor, role=role, action=action, target=target, outcome=outcome, details=details
        )
        try:
            if self._sqlite:
                row = self._append_sqlite(new)
            else:
                with self._engine.connect() as connection:
                    connection = connection.execution_options(isolation_level="READ COMMITTED")
                    row = self._append_locked(connection, new, sqlite_take_lock=False)
                    connection.commit()
        except self._database_errors as error:
            raise self._write_error(new, error) from error
        return AuditEntry.from_row(row)

    def _append_sqlite(self, new: NewEntry) -> EntryRow:
        """Append on a pooled connection driven directly, whatever the engine's begin mode.

        pysqlite opens transactions itself, deferred, and SQLAlchemy engines may configure
        that differently; a deferred transaction that reads the head and then writes can
        fail at once with "database is locked" when another writer went first. So the
        transaction is opened here with ``BEGIN IMMEDIATE`` in pysqlite's autocommit mode:
        it takes the write lock first, waiting up to the busy timeout.
        """
        pooled: Any = self._engine.raw_connection()
        driver: sqlite3.Connection = pooled.driver_connection
        saved_isolation = driver.isolation_level
        try:
            driver.isolation_level = None
            # The shared engine runs SQLite with synchronous=NORMAL, which can lose the last
            # commits on power loss; an audit entry must survive that, so it commits with
            # FULL and the connection is put back as it was.
            previous_sync = driver.execute("PRAGMA synchronous").fetchone()[0]
            driver.execute(f"PRAGMA synchronous={_SQLITE_FULL_SYNC}")
            try:
                driver.execute("BEGIN IMMEDIATE")
                try:
                    seq, prev_hash = driver.execute(_SQLITE_SELECT_HEAD).fetchone() or (None, "")
                    if seq is None:
                        raise self._missing_head()
                    row = seal_entry(
                        new,
                        seq=int(seq) + 1,
                        recorded_at=format_time(self._clock()),
                        prev_hash=prev_hash,
                    )
                    driver.execute(_SQLITE_INSERT_ENTRY, row)
                    driver.execute(_SQLITE_MOVE_HEAD, (row[0], row[-1]))
                    driver.execute("COMMIT")
                except BaseException:
                    if driver.in_transaction:
                        driver.execute("ROLLBACK")
                    raise
            finally:
                driver.execute(f"PRAGMA synchronous={int(previous_sync)}")
        finally:
            driver.isolation_level = saved_isolation
            pooled.close()
        return row

    def append_in(
        self,
        session: Session,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        details: Mapping[str, object] | None = None,
    ) -> AuditEntry:
        """Append one entry inside ``session``'s transaction; the caller commits or rolls back.

        The entry then commits atomically with the caller's own changes. Until the caller
        commits, the entry is not durable and every other append waits (the head is locked),
        so commit promptly. On SQLite the caller's transaction must not have read data it
        relies on before this call: taking the write lock then may fail, which raises
        :class:`~countyfl.audit.errors.AuditWriteError`.

        Parameters are those of :meth:`append`.

        Raises
        ------
        AuditWriteError
            If the entry is invalid or could not be written; roll the session back.
        """
        new = validate_new_entry(
            actor=actor, role=role, action=action, target=target, outcome=outcome, details=details
        )
        try:
            row = self._append_locked(session.connection(), new, sqlite_take_lock=self._sqlite)
        except SQLAlchemyError as error:
            raise self._write_error(new, error) from error
        return AuditEntry.from_row(row)

    def _append_locked(
        self, connection: Connection, new: NewEntry, *, sqlite_take_lock: bool
    ) -> EntryRow:
        """Lock the head, insert the next entry, move the head; no commit."""
        if sqlite_take_lock:
            # A write as the transaction's first statement takes SQLite's write lock before
            # the head is read, as BEGIN IMMEDIATE does.
            connection.execute(
                update(AuditHeadRecord).where(_HEAD.id == HEAD_ROW_ID).values(seq=_HEAD.seq)
            )
        statement = select(_HEAD.seq, _HEAD.entry_hash).where(_HEAD.id == HEAD_ROW_ID)
        if not self._sqlite:
            statement = statement.with_for_update()
        head = connection.execute(statement).one_or_none()
        if head is None:
            raise self._missing_head()
        # The time is taken under the lock so that times never go backwards along the chain
        # (unless the system clock does).
        row = seal_entry(
            new,
            seq=int(head.seq) + 1,
            recorded_at=format_time(self._clock()),
            prev_hash=head.entry_hash,
        )
        connection.execute(
            insert(AuditEntryRecord).values(dict(zip(ENTRY_FIELDS, row, strict=True)))
        )
        connection.execute(
            update(AuditHeadRecord)
            .where(_HEAD.id == HEAD_ROW_ID)
            .values(seq=row[0], entry_hash=row[-1])
        )
        return row

    def _missing_head(self) -> AuditWriteError:
        return AuditWriteError(
            f"the audit log in {self._where()} has no head row (audit_head id 1): it was "
            "deleted or the migration did not run; run 'countyfl audit verify' and restore "
            "the row from a backup"
        )

    def _write_error(self, new: NewEntry, error: Exception) -> AuditWriteError:
        # The details are left out: they may hold identifiers that have no place in error text.
        what = (
            f"audit entry {new.action!r} by {new.actor!r} on {new.target!r} could not be "
            f"written to {self._where()} ({_reason(error)}); the action must not go ahead."
        )
        if isinstance(error, self._integrity_errors):
            # Under the head lock the next seq is free unless rows were written behind the
            # log's back (or by a writer that does not take the lock).
            return AuditWriteError(
                f"{what} The entry after the recorded head already exists: the audit tables "
                "were changed outside countyfl.audit; run 'countyfl audit verify'"
            )
        return AuditWriteError(f"{what} Retry once the database is writable; {_MIGRATE_HINT}")

    # ------------------------------------------------------------------------------- read

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A connection whose reads all see one consistent state of the database."""
        try:
            with self._engine.connect() as connection:
                if self._sqlite:
                    # All reads must share one WAL snapshot, so a transaction must be open
                    # before the first: pysqlite opens none for reads unless told to (engines
                    # set up with SQLAlchemy's "BEGIN on begin" recipe already have one).
                    connection.begin()
                    driver: Any = connection.connection.driver_connection
                    if not driver.in_transaction:
                        connection.exec_driver_sql("BEGIN")
                else:
                    connection = connection.execution_options(isolation_level="REPEATABLE READ")
                try:
                    yield connection
                finally:
                    connection.rollback()
        except self._database_errors as error:
            raise AuditReadError(
                f"the audit log in {self._where()} cannot be read ({_reason(error)}); "
                f"{_MIGRATE_HINT}"
            ) from error

    def _stream_rows(
        self, connection: Connection, *, after_seq: int = 0, since: str | None = None
    ) -> Generator[EntryRow, None, None]:
        """Stored rows after ``after_seq`` (and at or after time ``since``), in seq order.

        Raw DB-API cursors: the verification of a million entries cannot afford a
        SQLAlchemy row object per entry. PostgreSQL streams through a server-side cursor.
        """
        dbapi: Any = connection.connection.dbapi_connection
        mark = "?" if self._sqlite else "%s"
        sql = f"{_SELECT_ENTRIES} WHERE seq > {mark}"
        parameters: tuple[object, ...] = (after_seq,)
        if since is not None:
            sql += f" AND recorded_at >= {mark}"
            parameters += (since,)
        sql += " ORDER BY seq"
        if self._sqlite:
            cursor = dbapi.cursor()
            cursor.arraysize = _STREAM_BATCH
        else:
            cursor = dbapi.cursor(name=f"countyfl_audit_{uuid.uuid4().hex}")
            cursor.itersize = _STREAM_BATCH
        try:
            cursor.execute(sql, parameters)
            while batch := cursor.fetchmany(_STREAM_BATCH):
                yield from batch
        finally:
            cursor.close()

    def _read_head(self, connection: Connection) -> ChainHead | None:
        row = connection.execute(
            select(_HEAD.seq, _HEAD.entry_hash).where(_HEAD.id == HEAD_ROW_ID)
        ).one_or_none()
        return None if row is None else ChainHead(int(row.seq), row.entry_hash)

    def _read_checkpoints(self, connection: Connection) -> list[Checkpoint]:
        rows = connection.execute(
            select(AuditCheckpointRecord.__table__).order_by(_CHECKPOINTS.id)
        ).all()
        return [_checkpoint_of(row) for row in rows]

    def head(self) -> ChainHead:
        """The last entry's seq and hash as recorded by the last append (seq 0 when empty).

        Raises
        ------
        AuditReadError
            If the log cannot be read or its head row is missing.
        """
        with self._snapshot() as connection:
            head = self._read_head(connection)
        if head is None:
            raise AuditReadError(
                f"the audit log in {self._where()} has no head row; run 'countyfl audit verify'"
            )
        return head

    def entries(
        self, *, after_seq: int = 0, since: datetime | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Stored entries after ``after_seq`` (from ``since`` on), oldest first, unverified.

        Raises
        ------
        AuditReadError
            If the log cannot be read, or an entry holds values no append writes.
        """
        since_text = None if since is None else format_time(since)
        with self._snapshot() as connection:
            rows = self._stream_rows(connection, after_seq=after_seq, since=since_text)
            found: list[AuditEntry] = []
            for row in rows:
                if limit is not None and len(found) >= limit:
                    break
                try:
                    found.append(AuditEntry.from_row(row))
                except ValueError as error:  # an outcome or time no append writes
                    raise AuditReadError(
                        f"entry {row[0]} of the audit log in {self._where()} cannot be read "
                        f"({error}): it was changed outside countyfl.audit; run "
                        "'countyfl audit verify'"
                    ) from None
            rows.close()
        return found

    def checkpoints(self) -> list[Checkpoint]:
        """The stored checkpoints, oldest first (signatures not checked).

        Raises
        ------
        AuditReadError
            If the log cannot be read.
        """
        with self._snapshot() as connection:
            return self._read_checkpoints(connection)

    # ----------------------------------------------------------------------------- verify

    def verify(
        self,
        *,
        public_keys: Sequence[Ed25519PublicKey] | None = None,
        site_checkpoints: Sequence[Checkpoint] | None = None,
        site_name: str = "the site's copy",
        known_checkpoints: Sequence[Checkpoint] = (),
        known_name: str = "this verifier's copy",
    ) -> VerificationResult:
        """Verify the whole chain, its head and (with public keys) the signed checkpoints.

        Everything is read in one consistent snapshot, so appends may go on meanwhile. Besides
        the chain itself, the log fails verification when it is empty (every countyfl
        database holds at least its first admin's entries, so an empty log was emptied), and,
        with public keys, when no signed checkpoint vouches for it (they were removed, or
        none was ever signed). Every checkpoint of a copy kept elsewhere (a site's, or the
        verifier's own memory of what it verified before) must still be in the database and
        the chain must still reach it: a log cut short and stripped of its checkpoints still
        fails against the latest checkpoint the verifier knows of. The result's summary says
        what the chain was compared against.

        Parameters
        ----------
        public_keys : Sequence[Ed25519PublicKey] | None
            Keys whose checkpoints are trusted; None checks the hash chain only.
        site_checkpoints : Sequence[Checkpoint] | None
            A site's copy of the checkpoints (see :meth:`export_checkpoints`).
        site_name : str
            How messages name that copy, e.g. its file name.
        known_checkpoints : Sequence[Checkpoint]
            The checkpoints this verifier trusted in earlier runs.
        known_name : str
            How messages name those.

        Raises
        ------
        AuditReadError
            If the log cannot be read.
        """
        copies = [(known_name, list(known_checkpoints))] if known_checkpoints else []
        with self._snapshot() as connection:
            head = self._read_head(connection)
            stored = self._read_checkpoints(connection)
            result = verify_chain(
                self._stream_rows(connection),
                head=head,
                checkpoints=stored,
                public_keys=public_keys,
                site_checkpoints=site_checkpoints,
                site_name=site_name,
                copies=copies,
            )
        problems = list(result.problems)
        if head is None:
            problems.append(
                Problem(
                    ProblemKind.REMOVED,
                    result.last_seq + 1,
                    "the log's head row (audit_head id 1) was removed: the end of the chain "
                    "cannot be checked, so entries after the last one may have been removed",
                )
            )
        if result.entries_checked == 0 and not problems:
            problems.append(
                Problem(
                    ProblemKind.EMPTY,
                    1,
                    "the audit log holds no entry at all, yet every countyfl database records "
                    "its first admin: it was emptied (or this is not the database you meant)",
                )
            )
        elif public_keys is not None and result.checkpoints_verified == 0 and not problems:
            problems.append(
                Problem(
                    ProblemKind.UNANCHORED,
                    1,
                    f"no signed checkpoint vouches for the {result.entries_checked} entries: "
                    "the checkpoints were removed, or none was ever signed (the API signs "
                    "them automatically; or run 'countyfl audit checkpoint')",
                )
            )
        compared = [
            "no head row" if head is None else f"the log's head row (entry {head.seq})",
        ]
        if public_keys is None:
            compared.append("no public key given, so no signed checkpoint")
        else:
            compared.append(f"{len(stored)} signed checkpoint(s) in the database")
            if site_checkpoints is not None:
                compared.append(f"{len(site_checkpoints)} in {site_name}")
            if known_checkpoints:
                compared.append(f"{len(known_checkpoints)} in {known_name}")
        return replace(result, problems=tuple(problems), compared=tuple(compared))

    # ------------------------------------------------------------------------- checkpoint

    def checkpoint(self, private_key: Ed25519PrivateKey) -> Checkpoint:
        """Sign the current head, store the checkpoint and return it.

        The entries after the latest checkpoint by the same key are verified first, so that
        a checkpoint never vouches for a chain already found broken.

        Raises
        ------
        AuditTamperedError
            If the entries since the last checkpoint fail verification (nothing is signed).
        AuditError
            If the log is empty (there is no head to sign).
        AuditWriteError
            If the checkpoint cannot be stored.
        AuditReadError
            If the log cannot be read.
        """
        public_key = private_key.public_key()
        key_id = key_id_of(public_key)
        with self._snapshot() as connection:
            head = self._read_head(connection)
            mine = [c for c in self._read_checkpoints(connection) if c.key_id == key_id]
            if head is None:
                raise AuditError(
                    f"the audit log in {self._where()} has no head row; run "
                    "'countyfl audit verify' before signing anything"
                )
            if head.seq == 0:
                raise AuditError(
                    f"the audit log in {self._where()} is empty: there is no entry to sign yet"
                )
            latest = max(mine, key=lambda c: c.seq, default=None)
            anchor_seq = 0 if latest is None else min(latest.seq - 1, head.seq - 1)
            anchor_hash = self._hash_at(connection, anchor_seq)
            result = verify_chain(
                self._stream_rows(connection, after_seq=anchor_seq),
                head=head,
                checkpoints=[] if latest is None else [latest],
                public_keys=[public_key],
                anchor=ChainHead(anchor_seq, anchor_hash),
            )
        if not result.ok:
            raise AuditTamperedError(
                f"refusing to sign a checkpoint of the audit log in {self._where()}: "
                f"{result.summary()} Run 'countyfl audit verify' and investigate first.",
                result,
            )
        checkpoint = sign_checkpoint(private_key, head, self._clock())
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(AuditCheckpointRecord).values(
                        seq=checkpoint.seq,
                        entry_hash=checkpoint.entry_hash,
                        signed_at=checkpoint.signed_at,
                        key_id=checkpoint.key_id,
                        signature=checkpoint.signature,
                    )
                )
        except SQLAlchemyError as error:
            raise AuditWriteError(
                f"the checkpoint of entry {checkpoint.seq} could not be stored in "
                f"{self._where()} ({_reason(error)}); {_MIGRATE_HINT}"
            ) from error
        return checkpoint

    def _hash_at(self, connection: Connection, seq: int) -> str:
        """The stored hash of entry ``seq`` (64 zeros for 0; empty text if it is missing)."""
        if seq == 0:
            return "0" * 64
        found = connection.execute(
            select(_ENTRIES.entry_hash).where(_ENTRIES.seq == seq)
        ).scalar_one_or_none()
        return found or ""

    # ----------------------------------------------------------------------------- export

    def export_entries(self, since: datetime | None, out: TextIO) -> int:
        """Write the stored entries (from ``since`` on) to ``out`` as JSON lines, oldest first.

        Each line is one object with every stored field, in the order of
        :data:`~countyfl.audit.chain.ENTRY_FIELDS`, as stored and hashed: ``details`` is the
        canonical JSON *text* (parse it to read the object), so anyone can recompute each
        ``entry_hash`` from the line without re-serialising JSON. Entries are exported as
        stored, without verification.

        Returns
        -------
        int
            How many entries were written.

        Raises
        ------
        AuditReadError
            If the log cannot be read.
        """
        since_text = None if since is None else format_time(since)
        count = 0
        with self._snapshot() as connection:
            for row in self._stream_rows(connection, since=since_text):
                record = dict(zip(ENTRY_FIELDS, row, strict=True))
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        return count

    def export_checkpoints(self, out: TextIO) -> int:
        """Write the stored checkpoints to ``out`` as JSON lines, oldest first; return the count.

        Sites keep these copies and pass them to verification, so that a checkpoint deleted
        from the database is noticed.
        """
        return write_checkpoints(self.checkpoints(), out)


def read_exported_entries(lines: Iterator[str] | Sequence[str]) -> Iterator[EntryRow]:
    """The stored rows of JSON lines written by :meth:`AuditLog.export_entries`.

    Feed them to :func:`~countyfl.audit.verification.verify_chain` to check an export (pass
    ``anchor=ChainHead(first_seq - 1, first_prev_hash)`` for an export made with ``since``).

    Raises
    ------
    ValueError
        If a line is not an exported entry (naming the line).
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or set(record) != set(ENTRY_FIELDS):
            raise ValueError(f"line {number} is not an exported audit entry")
        yield (
            int(record["seq"]),
            record["recorded_at"],
            record["actor"],
            record["role"],
            record["action"],
            record["target"],
            record["outcome"],
            record["details"],
            record["prev_hash"],
            record["entry_hash"],
        )
