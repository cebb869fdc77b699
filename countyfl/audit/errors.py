"""The audit log's errors: every one is a CountyflError that says what, where and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from countyfl.errors import CountyflError

if TYPE_CHECKING:
    from countyfl.audit.verification import VerificationResult


class AuditError(CountyflError):
    """Root of the audit log's errors."""


class AuditWriteError(AuditError):
    """An audit entry could not be written; the audited action must not go ahead.

    Callers rely on this: a prediction is not returned, a promotion is not made, when the
    entry recording it cannot be made durable.
    """


class AuditEntryInvalidError(AuditWriteError, ValueError):
    """The fields of an entry to append are not valid (so nothing was written)."""


class AuditReadError(AuditError):
    """The audit tables cannot be read (database unreachable, not migrated)."""


class AuditKeyError(AuditError):
    """A checkpoint signing key or public key file is missing, unsafe or malformed."""


class AuditCheckpointFileError(AuditError, ValueError):
    """A JSON-lines file of checkpoints cannot be read."""


class AuditTamperedError(AuditError):
    """The audit log failed verification, so the operation refused to go on."""

    def __init__(self, message: str, result: VerificationResult) -> None:
        super().__init__(message)
        self.result = result
