"""Automatic signed checkpoints: every N entries or T seconds, and when the service stops.

A checkpoint only protects the entries before it: anything after the latest one could be
rewritten by someone who can write to the database. A long-running service (the API)
therefore signs the head of the chain itself whenever ``every_entries`` entries were added
since the last checkpoint, or ``every_seconds`` passed with any entry added, and once more
when it shuts down. It looks at the database's head, so entries written by other
processes (the CLI) are covered too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countyfl.audit.checkpoints import Checkpoint, key_id_of
from countyfl.audit.errors import AuditError, AuditTamperedError
from countyfl.audit.log import AuditLog

logger = logging.getLogger(__name__)


class AutoCheckpointer:
    """Signs checkpoints of ``log`` with ``key`` when they are due (thread-safe).

    Call :meth:`sign_if_due` periodically (e.g. every second) and :meth:`close` at shutdown.

    Parameters
    ----------
    log : AuditLog
        The audit log to sign.
    key : Ed25519PrivateKey
        The checkpoint signing key.
    every_entries : int
        Sign once this many entries were added since the last checkpoint.
    every_seconds : float
        Sign once this long passed since the last checkpoint, if any entry was added.
    clock : Callable[[], float]
        Monotonic seconds.
    """

    def __init__(
        self,
        log: AuditLog,
        key: Ed25519PrivateKey,
        *,
        every_entries: int,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._key = key
        self._every_entries = every_entries
        self._every_seconds = every_seconds
        self._clock = clock
        self._guard = threading.Lock()
        self._last_time = clock()
        self._stopped = False
        self._broken = False
        key_id = key_id_of(key.public_key())
        mine = [c.seq for c in log.checkpoints() if c.key_id == key_id]
        self._last_seq = max(mine, default=0)

    @property
    def last_seq(self) -> int:
        """The entry the latest checkpoint by this key covers (0: none yet)."""
        return self._last_seq

    def sign_if_due(self, *, force: bool = False) -> Checkpoint | None:
        """Sign the head if a checkpoint is due (``force``: if any entry is unsigned).

        Failures are logged, never raised: a database that is down is tried again later; a
        chain that fails verification is not signed, and no further checkpoint is tried.
        """
        with self._guard:
            if self._stopped:
                return None
            try:
                head = self._log.head()
                if head.seq <= self._last_seq:
                    return None
                now = self._clock()
                due = (
                    force
                    or head.seq - self._last_seq >= self._every_entries
                    or now - self._last_time >= self._every_seconds
                )
                if not due:
                    return None
                checkpoint = self._log.checkpoint(self._key)
            except AuditTamperedError as error:
                self._stopped = self._broken = True
                logger.error("audit log failed verification; no more checkpoints: %s", error)
                return None
            except AuditError as error:
                logger.warning("audit checkpoint not signed now, will retry: %s", error)
                return None
            self._last_seq = checkpoint.seq
            self._last_time = now
            return checkpoint

    def close(self) -> Checkpoint | None:
        """Sign whatever is unsigned (the shutdown checkpoint), then stop."""
        checkpoint = self.sign_if_due(force=True)
        with self._guard:
            self._stopped = True
        return checkpoint

    def reopen(self) -> None:
        """Sign again after :meth:`close` (not after a chain that failed verification)."""
        with self._guard:
            self._stopped = self._broken
