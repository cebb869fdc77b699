"""The audit commands' work as plain functions over a database URL, for the CLI and the API."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy.engine import make_url

from countyfl.audit.checkpoints import Checkpoint, read_checkpoints, write_checkpoints
from countyfl.audit.errors import AuditCheckpointFileError, AuditKeyError
from countyfl.audit.log import AuditLog
from countyfl.audit.signing_keys import load_private_key, load_public_key
from countyfl.audit.verification import VerificationResult
from countyfl.files import make_private_directory, write_file
from countyfl.settings import Settings
from countyfl.storage import open_database


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
    engine = open_database(url)
    try:
        yield AuditLog(engine)
    finally:
        engine.dispose()


def known_checkpoints_path(database_url: str | None = None) -> Path:
    """Where this verifier keeps the checkpoints it trusted for ``database_url``.

    ``HOME/audit/verified-<16 hex of the URL's sha256>.jsonl``: one file per database (the
    URL without its password), owner-only.
    """
    settings = Settings()
    url = database_url or settings.resolved_database_url()
    rendered = make_url(url).render_as_string(hide_password=True)
    digest = hashlib.sha256(rendered.encode("utf-8")).hexdigest()[:16]
    return settings.home / "audit" / f"verified-{digest}.jsonl"


def verify_audit_log(
    database_url: str | None = None,
    *,
    public_key_paths: Sequence[Path] = (),
    checkpoints_path: Path | None = None,
    known_path: Path | None = None,
) -> VerificationResult:
    """Verify the audit log: the hash chain, and with public keys the signed checkpoints.

    With public keys, the verifier also remembers what it trusted: the checkpoints kept in
    ``known_path`` (by default :func:`known_checkpoints_path`) must still be in the database
    and the chain must still reach them, and after a verification that passes, the
    checkpoints it trusted are added to that file. So a log later cut short, with its
    checkpoints deleted, fails against the latest checkpoint this verifier has seen, even
    without a site's copy. A site's copy kept by another party is still the strongest check:
    it does not depend on this machine.

    Parameters
    ----------
    database_url : str | None
        The database; the settings' one by default.
    public_key_paths : Sequence[Path]
        ``.pub`` files of the checkpoint signing keys; none checks the hash chain only.
    checkpoints_path : Path | None
        A site's JSON-lines copy of the checkpoints; needs public keys.
    known_path : Path | None
        This verifier's own copy (JSON lines, created owner-only).

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
    memory = known_path or known_checkpoints_path(database_url)
    known = read_checkpoints(memory) if keys and memory.exists() else []
    with open_audit_log(database_url) as log:
        result = log.verify(
            public_keys=keys or None,
            site_checkpoints=site,
            site_name=str(checkpoints_path) if checkpoints_path else "the site's copy",
            known_checkpoints=known,
            known_name=f"this verifier's copy {memory}",
        )
    if keys and result.ok:
        remember_checkpoints(memory, [*known, *result.trusted])
    return result


def remember_checkpoints(path: Path, checkpoints: Sequence[Checkpoint]) -> None:
    """Write ``checkpoints`` (each once, by signature, in ``seq`` order) to an owner-only file.

    Raises
    ------
    AuditCheckpointFileError
        If the file cannot be written.
    """
    unique = {checkpoint.signature: checkpoint for checkpoint in checkpoints}
    ordered = sorted(unique.values(), key=lambda checkpoint: (checkpoint.seq, checkpoint.signed_at))
    try:
        make_private_directory(path.parent)
        text = io.StringIO()
        write_checkpoints(ordered, text)
        write_file(path, text.getvalue().encode("utf-8"), replace=True)
    except OSError as error:
        raise AuditCheckpointFileError(
            f"this verifier's copy of the checkpoints {path} cannot be written ({error}); "
            "check the folder's permissions"
        ) from None


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
