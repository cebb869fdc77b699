"""Signed checkpoints and their key files, as pure functions and files (no database)."""

from __future__ import annotations

import dataclasses
import io
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from countyfl.audit import (
    AuditCheckpointFileError,
    AuditKeyError,
    ChainHead,
    ProblemKind,
    generate_signing_key,
    load_private_key,
    load_public_key,
    read_checkpoints,
    verify_chain,
    write_checkpoints,
)
from countyfl.audit.chain import EntryRow, NewEntry, build_chain, validate_new_entry
from countyfl.audit.checkpoints import (
    Checkpoint,
    checkpoint_message,
    checkpoint_signature_valid,
    key_id_of,
    sign_checkpoint,
)
from countyfl.audit.signing_keys import default_signing_key_path
from countyfl.audit.verification import check_checkpoints
from countyfl.settings import Settings

SIGNED_AT = "2026-11-28T09:00:00.000000Z"


def _new(actor: str = "alice") -> tuple[NewEntry, str]:
    entry = validate_new_entry(
        actor=actor, role="admin", action="model.promote", target="m", outcome="ok"
    )
    return entry, SIGNED_AT


def _chain(length: int) -> list[EntryRow]:
    return list(build_chain(_new() for _ in range(length)))


def _sign(key: Ed25519PrivateKey, rows: list[EntryRow], seq: int) -> Checkpoint:
    head = ChainHead(seq, rows[seq - 1][9])
    return sign_checkpoint(key, head, datetime(2026, 11, 28, 9, tzinfo=UTC))


def test_a_checkpoint_signs_the_documented_message(signing_key: Ed25519PrivateKey) -> None:
    checkpoint = _sign(signing_key, _chain(2), 2)
    message = (
        f"countyfl-audit-checkpoint-v1\0{checkpoint.seq}\0{checkpoint.entry_hash}\0"
        f"{checkpoint.signed_at}\0{checkpoint.key_id}"
    ).encode()
    assert (
        checkpoint_message(
            checkpoint.seq, checkpoint.entry_hash, checkpoint.signed_at, checkpoint.key_id
        )
        == message
    )
    signing_key.public_key().verify(bytes.fromhex(checkpoint.signature), message)
    assert checkpoint.key_id == key_id_of(signing_key.public_key())
    assert len(checkpoint.key_id) == 16


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 1),
        ("entry_hash", "0" * 64),
        ("signed_at", "2026-11-28T09:00:00.000001Z"),
        ("key_id", "0" * 16),
        ("signature", "0" * 128),
        ("signature", "not hex"),
    ],
)
def test_changing_any_field_of_a_checkpoint_breaks_its_signature(
    signing_key: Ed25519PrivateKey, field: str, value: object
) -> None:
    checkpoint = _sign(signing_key, _chain(2), 2)
    assert checkpoint_signature_valid(checkpoint, signing_key.public_key())
    forged = dataclasses.replace(checkpoint, **{field: value})  # type: ignore[arg-type]
    assert not checkpoint_signature_valid(forged, signing_key.public_key())


def test_another_keys_signature_does_not_verify(signing_key: Ed25519PrivateKey) -> None:
    checkpoint = _sign(Ed25519PrivateKey.generate(), _chain(1), 1)
    assert not checkpoint_signature_valid(checkpoint, signing_key.public_key())


def test_checkpoints_round_trip_through_json_lines(
    signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    rows = _chain(3)
    checkpoints = [_sign(signing_key, rows, 1), _sign(signing_key, rows, 3)]
    buffer = io.StringIO()
    assert write_checkpoints(checkpoints, buffer) == 2
    path = tmp_path / "checkpoints.jsonl"
    path.write_text(buffer.getvalue() + "\n")
    assert read_checkpoints(path) == checkpoints


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"seq": 1}', "exactly the fields"),
        (
            '{"seq": 0, "entry_hash": "x", "signed_at": "yesterday", "key_id": "k", '
            '"signature": "s"}',
            "seq must be an integer >= 1; entry_hash must be 64",
        ),
    ],
)
def test_a_bad_checkpoint_line_is_named_with_its_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "copy.jsonl"
    path.write_text("\n" + line + "\n")
    with pytest.raises(AuditCheckpointFileError, match=message) as raised:
        read_checkpoints(path)
    assert f"{path}:2" in str(raised.value)


def test_a_missing_checkpoint_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(AuditCheckpointFileError, match="export-checkpoints"):
        read_checkpoints(tmp_path / "absent.jsonl")


# ------------------------------------------------------- checkpoints in chain verification


def test_signed_checkpoints_are_verified_and_matched(signing_key: Ed25519PrivateKey) -> None:
    rows = _chain(5)
    checkpoints = [_sign(signing_key, rows, 2), _sign(signing_key, rows, 5)]
    result = verify_chain(rows, checkpoints=checkpoints, public_keys=[signing_key.public_key()])
    assert result.ok
    assert result.checkpoints_verified == 2
    assert "2 signed checkpoints verified" in result.summary()


def test_a_recomputed_chain_fails_on_the_first_checkpoint_after_the_edit(
    signing_key: Ed25519PrivateKey,
) -> None:
    rows = _chain(6)
    checkpoints = [_sign(signing_key, rows, 2), _sign(signing_key, rows, 5)]
    # Entry 4 rewritten and every hash from there recomputed: the chain itself is consistent.
    rewritten = rows[:3] + list(
        build_chain([_new("mallory"), _new(), _new()], after=ChainHead(3, rows[2][9]))
    )
    assert verify_chain(rewritten).ok  # the hash chain alone cannot tell

    result = verify_chain(
        rewritten, checkpoints=checkpoints, public_keys=[signing_key.public_key()]
    )

    problem = result.first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.CHANGED, 5)
    assert problem.message.startswith("entry 5 does not match the checkpoint of entry 5 signed at")
    assert "entries 3 to 5 were changed and the chain's hashes recomputed" in problem.message


def test_checkpoints_of_an_unknown_key_make_verification_fail(
    signing_key: Ed25519PrivateKey,
) -> None:
    rows = _chain(2)
    stranger = _sign(Ed25519PrivateKey.generate(), rows, 2)
    result = verify_chain(rows, checkpoints=[stranger], public_keys=[signing_key.public_key()])
    assert [problem.kind for problem in result.problems] == [ProblemKind.UNVERIFIABLE_CHECKPOINT]
    assert "pass its .pub file with --public-key" in result.problems[0].message


def test_a_checkpoint_in_the_sites_copy_but_not_stored_was_removed(
    signing_key: Ed25519PrivateKey,
) -> None:
    rows = _chain(3)
    kept, deleted = _sign(signing_key, rows, 1), _sign(signing_key, rows, 3)
    trusted, problems = check_checkpoints(
        [kept], [signing_key.public_key()], [kept, deleted], site_name="site-a.jsonl"
    )
    assert sorted(c.seq for c in trusted) == [1, 3]
    assert [(p.kind, p.seq) for p in problems] == [(ProblemKind.REMOVED_CHECKPOINT, 3)]
    assert "is in site-a.jsonl but no longer in the database" in problems[0].message


def test_a_checkpoint_beyond_the_end_of_the_chain_means_entries_were_removed(
    signing_key: Ed25519PrivateKey,
) -> None:
    rows = _chain(5)
    checkpoint = _sign(signing_key, rows, 5)
    result = verify_chain(
        rows[:3], checkpoints=[checkpoint], public_keys=[signing_key.public_key()]
    )
    problem = result.first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.REMOVED, 4)
    assert "but the chain ends at entry 3" in problem.message


# -------------------------------------------------------------------------------- key files


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.key"
    private_path, public_path, key_id = generate_signing_key(path)
    assert (private_path, public_path) == (path, tmp_path / "keys" / "audit.key.pub")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private_key, public_key = load_private_key(path), load_public_key(public_path)
    assert key_id_of(public_key) == key_id == key_id_of(private_key.public_key())


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    generate_signing_key(path)
    before = path.read_bytes()
    with pytest.raises(AuditKeyError, match="refusing to overwrite"):
        generate_signing_key(path)
    assert path.read_bytes() == before


def test_keygen_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "audit.key.pub").write_text("old")
    with pytest.raises(AuditKeyError, match=r"audit\.key\.pub already exists"):
        generate_signing_key(tmp_path / "audit.key")
    assert not (tmp_path / "audit.key").exists()


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    generate_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        load_private_key(path)


def test_keys_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    other = X25519PrivateKey.generate()
    private_path = tmp_path / "x25519.key"
    private_path.write_bytes(other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    private_path.chmod(0o600)
    public_path = tmp_path / "x25519.pub"
    public_path.write_bytes(
        other.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(AuditKeyError, match="not an Ed25519 key"):
        load_private_key(private_path)
    with pytest.raises(AuditKeyError, match="not an Ed25519 key"):
        load_public_key(public_path)


def test_passing_the_private_key_as_public_key_says_so(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    generate_signing_key(path)
    with pytest.raises(AuditKeyError, match="that is the private key"):
        load_public_key(path)


def test_a_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(AuditKeyError, match="countyfl audit keygen"):
        load_private_key(tmp_path / "absent.key")


def test_the_default_signing_key_lives_under_the_settings_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert default_signing_key_path(settings) == tmp_path / "keys" / "audit-signing.key"
