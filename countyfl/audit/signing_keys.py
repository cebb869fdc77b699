"""The Ed25519 key files that sign audit checkpoints: generation, safe storage and loading.

The private key is a PEM (PKCS #8, unencrypted) file readable by its owner only (mode 0600);
the public key is a PEM (SubjectPublicKeyInfo) file beside it, named ``PATH.pub``. Keep the
private key off the database's host and backups: whoever can write to the database must not
also be able to sign.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from countyfl.audit.checkpoints import key_id_of
from countyfl.audit.errors import AuditKeyError
from countyfl.files import make_private_directory, shared_mode, write_file
from countyfl.settings import Settings

SIGNING_KEY_FILE = "audit-signing.key"


def default_signing_key_path(settings: Settings | None = None) -> Path:
    """``HOME/keys/audit-signing.key``, with HOME from the service settings."""
    return (settings or Settings()).home / "keys" / SIGNING_KEY_FILE


def public_key_path(private_key_path: Path) -> Path:
    """Where the public key of ``private_key_path`` is written: the same name plus ``.pub``."""
    return private_key_path.with_name(private_key_path.name + ".pub")


def generate_signing_key(path: Path) -> tuple[Path, Path, str]:
    """Create a new Ed25519 key pair: the private key at ``path``, the public one beside it.

    Returns
    -------
    tuple[Path, Path, str]
        The private key file, the public key file and the key id.

    Raises
    ------
    AuditKeyError
        If either file already exists (a key is never overwritten: checkpoints signed with
        it would become unverifiable) or the files cannot be written.
    """
    public_path = public_key_path(path)
    for existing in (path, public_path):
        if existing.exists():
            raise AuditKeyError(
                f"{existing} already exists; refusing to overwrite a signing key. Choose "
                "another --out path, or move the old key away yourself (keep its .pub file: "
                "old checkpoints are verified with it)"
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    try:
        make_private_directory(path.parent)
        write_file(path, private_pem)
    except OSError as error:
        raise AuditKeyError(f"signing key {path} cannot be written: {error}") from error
    try:
        write_file(public_path, public_pem, mode=0o644)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise AuditKeyError(f"public key {public_path} cannot be written: {error}") from error
    return path, public_path, key_id_of(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``.

    Raises
    ------
    AuditKeyError
        If the file is missing, readable by group or others, or not an Ed25519 PEM key.
    """
    try:
        shared = shared_mode(path)
        data = path.read_bytes()
    except OSError as error:
        raise AuditKeyError(
            f"signing key {path} cannot be read ({error.strerror}); create one with "
            "'countyfl audit keygen --out PATH' or pass --signing-key"
        ) from None
    if shared is not None:
        raise AuditKeyError(
            f"signing key {path} is accessible to other users (mode {shared:04o}); "
            f"run 'chmod 600 {path}' and consider the key compromised if others could read it"
        )
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise AuditKeyError(
            f"signing key {path} is not an unencrypted PEM private key ({error}); pass the "
            "file written by 'countyfl audit keygen'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(
            f"signing key {path} is a {type(key).__name__}, not an Ed25519 key; pass the "
            "file written by 'countyfl audit keygen'"
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in ``path`` (a ``.pub`` file written by :func:`generate_signing_key`).

    Raises
    ------
    AuditKeyError
        If the file is missing or not an Ed25519 PEM public key.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise AuditKeyError(
            f"public key {path} cannot be read ({error.strerror}); pass the .pub file written "
            "beside the signing key by 'countyfl audit keygen'"
        ) from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        hint = " (that is the private key: pass the .pub file)" if b"PRIVATE KEY" in data else ""
        raise AuditKeyError(f"public key {path} is not a PEM public key{hint} ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(
            f"public key {path} is a {type(key).__name__}, not an Ed25519 key; pass the .pub "
            "file written by 'countyfl audit keygen'"
        )
    return key
