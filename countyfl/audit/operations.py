"""The audit commands' work as plain functions over a database URL, for the CLI and the API."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

from countyfl.audit.checkpoints import Checkpoint, read_checkpoints
from countyfl.audit.errors import AuditKeyError
from countyfl.audit.log import AuditLog
from countyfl.audit.signing_keys import load_private_key, load_public_key
from countyfl.audit.verification import VerificationResult
from countyfl.settings import Settings
from countyfl.storage import create_database_engine, upgrade


@contextmanager
def open_audit_log(database_url: str | None = None) -> Iterator[AuditLog]:
    """The audit log of ``database_url`` (the settings' database by default), migrated.

    The engine is disposed of when the block ends.

    Raises
    ------
    countyfl.errors.ConfigError
        If the URL is not usable.
    """
    url = database_url or Settings().resolved_database_url()
    engine = create_database_engine(url)
    try:
        upgrade(engine)
        yield AuditLog(engine)
    finally:
        engine.dispose()


def verify_audit_log(
    database_url: str | None = None,
    *,
    public_key_paths: Sequence[Path] = (),
    checkpoints_path: Path | None = None,
) -> VerificationResult:
    """Verify the audit log: the hash chain, and with public keys the signed checkpoints.

    Parameters
    ----------
    database_url : str | None
        The database; the settings' one by default.
    public_key_paths : Sequence[Path]
        ``.pub`` files of the checkpoint signing keys; none checks the hash chain only.
    checkpoints_path : Path | None
        A site's JSON-lines copy of the checkpoints; needs public keys.

    Raises
    ------
    AuditKeyError, AuditCheckpointFileError, ConfigError
        For unusable inputs (nothing was verified).
    AuditReadError
        If the log cannot be read.
    """
    keys = [load_public_key(path) for path in public_key_paths]
    site: list[Checkpoint] | None = None
    if checkpoints_path is not None:
        if not keys:
            raise AuditKeyError(
                f"checkpoints in {checkpoints_path} can only be checked with the public key "
                "that signed them; pass --public-key too"
            )
        site = read_checkpoints(checkpoints_path)
    with open_audit_log(database_url) as log:
        return log.verify(
            public_keys=keys or None,
            site_checkpoints=site,
            site_name=str(checkpoints_path) if checkpoints_path else "the site's copy",
        )


def export_audit_entries(database_url: str | None, since: datetime | None, out: TextIO) -> int:
    """Write the log's entries from ``since`` on to ``out`` as JSON lines; return the count."""
    with open_audit_log(database_url) as log:
        return log.export_entries(since, out)


def export_audit_checkpoints(database_url: str | None, out: TextIO) -> int:
    """Write the log's signed checkpoints to ``out`` as JSON lines; return the count."""
    with open_audit_log(database_url) as log:
        return log.export_checkpoints(out)


def checkpoint_audit_log(database_url: str | None, signing_key_path: Path) -> Checkpoint:
    """Sign the log's current head with the key in ``signing_key_path``; return the checkpoint.

    Raises
    ------
    AuditKeyError
        If the key file is missing, unsafe or not Ed25519 (nothing was signed).
    AuditTamperedError
        If the entries since the last checkpoint fail verification (nothing was signed).
    """
    key = load_private_key(signing_key_path)
    with open_audit_log(database_url) as log:
        return log.checkpoint(key)
