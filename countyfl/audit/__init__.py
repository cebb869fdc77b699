"""The append-only, hash-chained audit log: who did what, when, with what outcome.

``AuditLog(engine).append(...)`` records an entry durably or raises ``AuditWriteError``;
``verify`` checks the chain and the Ed25519-signed checkpoints; ``export_entries`` writes
JSON lines. The encoding a regulator re-implements is documented in
:mod:`countyfl.audit.chain` (entries) and :mod:`countyfl.audit.checkpoints` (signatures).
"""

from countyfl.audit.autocheckpoint import AutoCheckpointer
from countyfl.audit.chain import (
    GENESIS,
    GENESIS_HASH,
    AuditEntry,
    ChainHead,
    EntryRow,
    Outcome,
    hash_entry,
)
from countyfl.audit.checkpoints import Checkpoint, read_checkpoints, write_checkpoints
from countyfl.audit.errors import (
    AuditCheckpointFileError,
    AuditEntryInvalidError,
    AuditError,
    AuditKeyError,
    AuditReadError,
    AuditTamperedError,
    AuditWriteError,
)
from countyfl.audit.log import AuditLog, read_exported_entries
from countyfl.audit.operations import (
    checkpoint_audit_log,
    export_audit_checkpoints,
    export_audit_entries,
    open_audit_log,
    verify_audit_log,
)
from countyfl.audit.signing_keys import (
    default_signing_key_path,
    generate_signing_key,
    load_private_key,
    load_public_key,
)
from countyfl.audit.verification import Problem, ProblemKind, VerificationResult, verify_chain

__all__ = [
    "GENESIS",
    "GENESIS_HASH",
    "AuditCheckpointFileError",
    "AuditEntry",
    "AuditEntryInvalidError",
    "AuditError",
    "AuditKeyError",
    "AuditLog",
    "AuditReadError",
    "AuditTamperedError",
    "AuditWriteError",
    "AutoCheckpointer",
    "ChainHead",
    "Checkpoint",
    "EntryRow",
    "Outcome",
    "Problem",
    "ProblemKind",
    "VerificationResult",
    "checkpoint_audit_log",
    "default_signing_key_path",
    "export_audit_checkpoints",
    "export_audit_entries",
    "generate_signing_key",
    "hash_entry",
    "load_private_key",
    "load_public_key",
    "open_audit_log",
    "read_checkpoints",
    "read_exported_entries",
    "verify_audit_log",
    "verify_chain",
    "write_checkpoints",
]
