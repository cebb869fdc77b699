"""Pseudonymisation at ingestion: identifiers become a keyed HMAC with the site's secret.

The secret is 32 random bytes in an owner-only file in the site's own folder
(``pseudonym.key``, mode 0600); it never leaves the site, so nobody else can recompute a
pseudonym from a guessed identifier. A pseudonym is the first 16 hex digits of
HMAC-SHA256(secret, identifiers), prefixed ``p-``: stable at the site across exports, so
its staff can follow a quarantined row back to the record without it naming anyone.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Callable
from pathlib import Path

from countyfl.errors import ConfigError
from countyfl.files import ensure_private_directory, shared_mode, write_file

SECRET_FILE = "pseudonym.key"
SECRET_BYTES = 32
PSEUDONYM_HEX_DIGITS = 16


def load_or_create_secret(state_dir: Path) -> bytes:
    """The site's pseudonym secret, created owner-only on first use.

    Raises ConfigError when the file is readable by others (it may be compromised) or
    is not a secret this module wrote.
    """
    ensure_private_directory(state_dir)
    path = state_dir / SECRET_FILE
    if not path.exists():
        # Another process may create it first: then read theirs.
        with contextlib.suppress(FileExistsError):
            write_file(path, secrets.token_bytes(SECRET_BYTES))
    mode = shared_mode(path)
    if mode is not None:
        raise ConfigError(
            f"{path}: the pseudonym secret is readable by others (mode {mode:04o}); it may be "
            f"compromised. Remove access (chmod 600 {path}) or, if others did read it, delete "
            "it so a new secret is made (pseudonyms then change)"
        )
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise ConfigError(
            f"{path}: not a pseudonym secret ({len(secret)} bytes, {SECRET_BYTES} expected); "
            "restore it from the site's backup or delete it to make a new one"
        )
    return secret


def pseudonymiser(secret: bytes) -> Callable[[str], str]:
    """identifier text -> ``p-`` + 16 hex digits of HMAC-SHA256(secret, text)."""
    if len(secret) < 16:
        raise ConfigError("a pseudonym secret needs at least 16 bytes")

    def pseudonym(identifier: str) -> str:
        digest = hmac.new(secret, identifier.encode("utf-8"), hashlib.sha256).hexdigest()
        return "p-" + digest[:PSEUDONYM_HEX_DIGITS]

    return pseudonym
