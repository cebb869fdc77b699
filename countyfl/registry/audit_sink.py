"""The audit sink the registry writes to, and the order in which it writes.

A refusal is audited before it is raised. An allowed change is audited (``ok``) *before*
the change can commit, so a change is never made when its entry cannot be written: with
``countyfl.audit.AuditLog`` the entry is written inside the change's own transaction and
both commit or neither does; with any other sink the entry is appended just before the
transaction starts, and a ``failed`` entry follows if the change then does not commit.
Reads are audited after reading and before the result is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from countyfl.audit.chain import Outcome as Outcome  # re-exported: how an audited action ended
from countyfl.errors import CountyflError
from countyfl.registry.roles import Principal
from countyfl.storage.database import session_factory

logger = logging.getLogger(__name__)

LOGIN = "login"
"""Audit action of every authentication attempt (password or API token)."""


class AuditSink(Protocol):
    """Where the registry records who did what.

    ``countyfl.audit.AuditLog`` is the production sink. The registry depends only on this
    protocol so that it never depends on the audit log's storage and tests can pass a recorder.
    ``append`` raises (``AuditWriteError`` for the real log) when it cannot write; the
    registry lets that error through and does not make the change.
    """

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        details: Mapping[str, object] | None = None,
    ) -> object:
        """Record one entry and return it (the registry ignores the return value)."""
        ...


def record(
    audit: AuditSink,
    principal: Principal,
    action: str,
    target: str,
    outcome: Outcome,
    details: Mapping[str, object] | None = None,
) -> None:
    """Append one entry for ``principal`` (``action`` is an ``Action`` or :data:`LOGIN`)."""
    audit.append(
        actor=principal.username,
        role=principal.role.value,
        action=str(action),
        target=target,
        outcome=outcome.value,
        details=dict(details or {}),
    )


@runtime_checkable
class TransactionalAuditSink(AuditSink, Protocol):
    """A sink that can also write an entry inside the caller's transaction.

    ``countyfl.audit.AuditLog.append_in`` does: the entry then commits or rolls back together
    with the registry change it records.
    """

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
    ) -> object:
        """Record one entry inside ``session``'s transaction (the caller commits)."""
        ...


@dataclass(frozen=True)
class Change:
    """One change to audit: its action, target and details."""

    action: str
    target: str
    details: Mapping[str, object] = field(default_factory=dict)


@contextmanager
def audited_transaction(
    engine: Engine, audit: AuditSink, principal: Principal, *changes: Change
) -> Iterator[Session]:
    """A session for audited changes, committed when the ``with`` body ends.

    An ``ok`` entry per change is written first: inside the session's transaction when the
    sink is a :class:`TransactionalAuditSink` (entries and changes then commit together),
    otherwise just before the session touches the database. If writing an entry fails, the
    body never runs. If the body or the commit fails, the session is rolled back and a
    ``failed`` entry follows for each change, carrying the error's class (and its message
    for countyfl errors only: database errors can quote row values, which may be secret);
    the error propagates.

    The body must not commit; it re-checks whatever was decided before the transaction
    (another caller may have changed it since) and raises to abandon the change.
    """
    written = 0
    try:
        with session_factory(engine)() as session:
            for change in changes:
                if isinstance(audit, TransactionalAuditSink):
                    # Written first: on SQLite this also takes the transaction's write lock.
                    audit.append_in(
                        session,
                        actor=principal.username,
                        role=principal.role.value,
                        action=change.action,
                        target=change.target,
                        outcome=Outcome.OK.value,
                        details=dict(change.details),
                    )
                else:
                    record(
                        audit, principal, change.action, change.target, Outcome.OK, change.details
                    )
                written += 1
            yield session
            session.commit()
    except Exception as error:
        if not written:
            raise
        for change in changes[:written]:
            failure: dict[str, object] = {**change.details, "error": type(error).__name__}
            if isinstance(error, CountyflError):
                failure["message"] = str(error)
            try:
                record(audit, principal, change.action, change.target, Outcome.FAILED, failure)
            except Exception:
                logger.warning("could not audit that %s on %s failed", change.action, change.target)
        raise
