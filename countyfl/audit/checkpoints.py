"""Signed checkpoints of the audit chain's head, and their JSON-lines copies kept by sites.

A hash chain alone does not stop someone who can write to the database from editing an entry
and recomputing every hash after it. A checkpoint is an Ed25519 signature, by a key kept
away from the database, over the head of the chain at one moment. Once sites keep copies of
the checkpoints, a rewritten chain no longer matches them, and a checkpoint cannot be forged
or moved without the private key.

Signed message, version 1: the UTF-8 bytes of ::

    "countyfl-audit-checkpoint-v1" NUL seq NUL entry_hash NUL signed_at NUL key_id

with NUL the byte 0x00, ``seq`` in decimal ASCII, ``entry_hash`` the 64-hex hash of entry
``seq``, ``signed_at`` the signing time in the form of ``recorded_at`` (UTC, microseconds) and
``key_id`` the first 16 hex characters of SHA-256 over the 32 raw bytes of the Ed25519
public key. The signature is stored as 128 lowercase hex characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from hashlib import sha256
from pathlib import Path
from typing import TextIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from countyfl.audit.chain import ChainHead, format_time, is_hash_text, is_time_text
from countyfl.audit.errors import AuditCheckpointFileError

CHECKPOINT_TAG = "countyfl-audit-checkpoint-v1"
KEY_ID_LENGTH = 16

_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_FIELDS = ("seq", "entry_hash", "signed_at", "key_id", "signature")


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that entry ``seq`` of the chain had hash ``entry_hash``."""

    seq: int
    entry_hash: str
    signed_at: str
    """Signing time, in the text form of ``recorded_at``."""
    key_id: str
    """Which key signed: see :func:`key_id_of`."""
    signature: str
    """Ed25519 signature of :func:`checkpoint_message`, 128 lowercase hex characters."""

    def describe(self) -> str:
        """How messages name this checkpoint: ``checkpoint of entry 5 signed at ... by key``."""
        return f"the checkpoint of entry {self.seq} signed at {self.signed_at} by key {self.key_id}"

    def to_json(self) -> str:
        """One JSON line (without the newline)."""
        return json.dumps(asdict(self), separators=(",", ":"))


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The key id of ``public_key``: the first 16 hex characters of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return sha256(raw).hexdigest()[:KEY_ID_LENGTH]


def checkpoint_message(seq: int, entry_hash: str, signed_at: str, key_id: str) -> bytes:
    """The bytes a checkpoint's signature is taken over (see the module docstring)."""
    return f"{CHECKPOINT_TAG}\0{seq}\0{entry_hash}\0{signed_at}\0{key_id}".encode()


def sign_checkpoint(
    private_key: Ed25519PrivateKey, head: ChainHead, signed_at: datetime
) -> Checkpoint:
    """Sign ``head`` at time ``signed_at`` (aware) with ``private_key``."""
    key_id = key_id_of(private_key.public_key())
    when = format_time(signed_at)
    signature = private_key.sign(checkpoint_message(head.seq, head.entry_hash, when, key_id))
    return Checkpoint(head.seq, head.entry_hash, when, key_id, signature.hex())


def checkpoint_signature_valid(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    """Whether ``checkpoint`` is well formed and its signature verifies with ``public_key``."""
    if not (
        _SIGNATURE.fullmatch(checkpoint.signature)
        and is_hash_text(checkpoint.entry_hash)
        and is_time_text(checkpoint.signed_at)
    ):
        return False
    message = checkpoint_message(
        checkpoint.seq, checkpoint.entry_hash, checkpoint.signed_at, checkpoint.key_id
    )
    try:
        public_key.verify(bytes.fromhex(checkpoint.signature), message)
    except InvalidSignature:
        return False
    return True


def write_checkpoints(checkpoints: Iterable[Checkpoint], out: TextIO) -> int:
    """Write ``checkpoints`` to ``out`` as JSON lines; return how many were written."""
    count = 0
    for checkpoint in checkpoints:
        out.write(checkpoint.to_json() + "\n")
        count += 1
    return count


def parse_checkpoint(line: str, *, where: str) -> Checkpoint:
    """The checkpoint of one JSON line; ``where`` (``FILE:LINE``) goes into error messages.

    Only the form is checked here, not the signature.

    Raises
    ------
    AuditCheckpointFileError
        If the line is not a JSON object with exactly the checkpoint fields in their forms.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise AuditCheckpointFileError(
            f"{where}: not JSON ({error.msg}); each line must be one checkpoint as written by "
            "'countyfl audit export-checkpoints'"
        ) from None
    if not isinstance(record, dict) or set(record) != set(_FIELDS):
        raise AuditCheckpointFileError(
            f"{where}: a checkpoint must be a JSON object with exactly the fields "
            f"{', '.join(_FIELDS)}; re-export it with 'countyfl audit export-checkpoints'"
        )
    seq, entry_hash = record["seq"], record["entry_hash"]
    signed_at, key_id, signature = record["signed_at"], record["key_id"], record["signature"]
    problems = []
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        problems.append("seq must be an integer >= 1")
    if not isinstance(entry_hash, str) or not is_hash_text(entry_hash):
        problems.append("entry_hash must be 64 lowercase hex characters")
    if not isinstance(signed_at, str) or not is_time_text(signed_at):
        problems.append("signed_at must look like 2026-11-28T09:15:02.000341Z")
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        problems.append("key_id must be 16 lowercase hex characters")
    if not isinstance(signature, str) or _SIGNATURE.fullmatch(signature) is None:
        problems.append("signature must be 128 lowercase hex characters")
    if problems:
        raise AuditCheckpointFileError(f"{where}: {'; '.join(problems)}")
    return Checkpoint(seq, entry_hash, signed_at, key_id, signature)


def read_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoints of a JSON-lines file (blank lines are skipped).

    Raises
    ------
    AuditCheckpointFileError
        If the file cannot be read or a line is not a checkpoint (naming the line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AuditCheckpointFileError(
            f"checkpoint file {path} cannot be read ({error}); pass the JSON-lines file "
            "written by 'countyfl audit export-checkpoints'"
        ) from None
    return [
        parse_checkpoint(line, where=f"{path}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
