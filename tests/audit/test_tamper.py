"""Tampering behind the log's back with raw SQL: verification names the right entry.

Each test first drops the append-only triggers, as someone with DDL rights on the database
could, then edits, deletes or inserts rows directly, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from audit_testing import (
    COLUMNS,
    drop_append_only_guards,
    edit_rows,
    execute,
    fill,
    rehash,
    replace_chain,
    stored_rows,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countyfl.audit import (
    AuditLog,
    AuditReadError,
    AuditWriteError,
    ProblemKind,
    hash_entry,
    read_checkpoints,
)
from countyfl.audit.chain import EntryRow

ENTRIES = 8


@pytest.fixture
def filled(log: AuditLog) -> AuditLog:
    fill(log, ENTRIES)
    assert log.verify().ok
    drop_append_only_guards(log.engine)
    return log


def _first(log: AuditLog, **verify: object) -> tuple[ProblemKind, int, str]:
    result = log.verify(**verify)  # type: ignore[arg-type]
    assert not result.ok
    problem = result.first_problem
    assert problem is not None
    return problem.kind, problem.seq, problem.message


def test_an_edited_entry_is_named_as_changed(filled: AuditLog) -> None:
    execute(
        filled.engine, "UPDATE audit_entries SET outcome = 'ok', actor = ? WHERE seq = 5", ["eve"]
    )
    assert _first(filled) == (
        ProblemKind.CHANGED,
        5,
        "entry 5 was changed: its stored hash does not match its contents",
    )


def test_edited_details_are_named_as_changed(filled: AuditLog) -> None:
    execute(filled.engine, "UPDATE audit_entries SET details = '{\"request\":99}' WHERE seq = 2")
    assert _first(filled)[:2] == (ProblemKind.CHANGED, 2)


def test_an_edited_entry_with_its_own_hash_recomputed_is_still_named(filled: AuditLog) -> None:
    row = stored_rows(filled.engine)[3]
    fields = (*row[:2], "eve", *row[3:9])
    execute(
        filled.engine,
        "UPDATE audit_entries SET actor = ?, entry_hash = ? WHERE seq = 4",
        ["eve", hash_entry(*fields)],
    )
    kind, seq, message = _first(filled)
    assert (kind, seq) == (ProblemKind.CHANGED, 4)
    assert "entry 4 was changed: its hash was recomputed, but entry 5 still links" in message


def test_a_deleted_entry_is_named_as_removed(filled: AuditLog) -> None:
    execute(filled.engine, "DELETE FROM audit_entries WHERE seq = 6")
    assert _first(filled) == (
        ProblemKind.REMOVED,
        6,
        "entry 6 is missing (removed): entry 5 is followed by entry 7",
    )


def test_deleted_last_entries_are_caught_by_the_head(filled: AuditLog) -> None:
    execute(filled.engine, f"DELETE FROM audit_entries WHERE seq >= {ENTRIES - 1}")
    kind, seq, message = _first(filled)
    assert (kind, seq) == (ProblemKind.REMOVED, ENTRIES - 1)
    assert f"entries {ENTRIES - 1} to {ENTRIES} are missing (removed)" in message


def test_an_entry_slipped_into_the_middle_is_named_as_inserted(filled: AuditLog) -> None:
    rows = stored_rows(filled.engine)
    forged_fields = (4, rows[3][1], "eve", "admin", "model.promote", "m", "ok", "{}", rows[2][9])
    forged = (*forged_fields, hash_entry(*forged_fields))
    # Make room at seq 4 (via negative numbers: the primary key is checked row by row).
    execute(filled.engine, "UPDATE audit_entries SET seq = -seq - 1 WHERE seq >= 4")
    execute(filled.engine, "UPDATE audit_entries SET seq = -seq WHERE seq < 0")
    execute(
        filled.engine,
        f"INSERT INTO audit_entries ({COLUMNS}) VALUES ({', '.join('?' * 10)})",
        forged,
    )
    assert _first(filled) == (
        ProblemKind.INSERTED,
        4,
        "entry 4 was inserted: entry 5 links to entry 3, skipping entry 4",
    )


def test_an_entry_added_after_the_head_is_named_as_inserted(filled: AuditLog) -> None:
    last = stored_rows(filled.engine)[-1]
    fields = (ENTRIES + 1, last[1], "eve", "admin", "login", "", "ok", "{}", last[9])
    execute(
        filled.engine,
        f"INSERT INTO audit_entries ({COLUMNS}) VALUES ({', '.join('?' * 10)})",
        (*fields, hash_entry(*fields)),
    )
    kind, seq, message = _first(filled)
    assert (kind, seq) == (ProblemKind.INSERTED, ENTRIES + 1)
    assert f"entry {ENTRIES + 1} was inserted" in message


def test_a_deleted_head_row_fails_verification(filled: AuditLog) -> None:
    execute(filled.engine, "DELETE FROM audit_head")
    kind, _seq, message = _first(filled)
    assert kind is ProblemKind.REMOVED
    assert "head row (audit_head id 1) was removed" in message


# --------------------------------------------------------- rewriting the chain consistently


def _rewrite_from(log: AuditLog, seq: int) -> list[EntryRow]:
    """Edit entry ``seq`` and recompute every hash from there on, head included."""
    rows = edit_rows(
        stored_rows(log.engine),
        seq,
        lambda row: (*row[:2], "eve", *row[3:]),
    )
    rewritten = rehash(rows, start=seq - 1)
    replace_chain(log.engine, rewritten)
    return rewritten


def test_a_rewritten_chain_passes_the_hash_check_but_fails_on_the_signed_checkpoint(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    fill(log, 3)
    log.checkpoint(signing_key)
    fill(log, 3)
    log.checkpoint(signing_key)
    fill(log, 2)
    drop_append_only_guards(log.engine)
    _rewrite_from(log, 2)

    chain_only = log.verify()
    assert chain_only.ok, "a consistently recomputed chain passes the hash check alone"
    assert "Only the hash chain was checked" in chain_only.summary()

    kind, seq, message = _first(log, public_keys=[signing_key.public_key()])
    assert (kind, seq) == (ProblemKind.CHANGED, 3)
    assert message.startswith("entry 3 does not match the checkpoint of entry 3 signed at")
    assert "entries 1 to 3 were changed and the chain's hashes recomputed" in message


def test_an_edit_after_the_last_checkpoint_is_caught_by_the_next_one_only(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    """The limit of checkpoints: entries after the last one are covered by the chain alone."""
    fill(log, 4)
    log.checkpoint(signing_key)
    fill(log, 3)
    drop_append_only_guards(log.engine)
    _rewrite_from(log, 6)
    assert log.verify(public_keys=[signing_key.public_key()]).ok


def test_deleting_the_checkpoints_too_is_caught_by_a_sites_copy(
    log: AuditLog, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    fill(log, 5)
    log.checkpoint(signing_key)
    copy = io.StringIO()
    log.export_checkpoints(copy)
    site_file = tmp_path / "site-a-checkpoints.jsonl"
    site_file.write_text(copy.getvalue())
    drop_append_only_guards(log.engine)
    _rewrite_from(log, 2)
    execute(log.engine, "DELETE FROM audit_checkpoints")

    without_copy = log.verify(public_keys=[signing_key.public_key()])
    # Nothing left in the database contradicts the rewrite, but nothing vouches for it:
    # with a public key, a log without any signed checkpoint fails (issue 13, finding 6).
    assert [problem.kind for problem in without_copy.problems] == [ProblemKind.UNANCHORED]
    assert "no signed checkpoint vouches for the 5 entries" in without_copy.summary()

    result = log.verify(
        public_keys=[signing_key.public_key()],
        site_checkpoints=read_checkpoints(site_file),
        site_name=site_file.name,
    )
    assert not result.ok
    kinds = {(problem.kind, problem.seq) for problem in result.problems}
    assert kinds == {(ProblemKind.REMOVED_CHECKPOINT, 5), (ProblemKind.CHANGED, 5)}
    assert any(
        "is in site-a-checkpoints.jsonl but no longer in the database" in problem.message
        for problem in result.problems
    )


def test_a_checkpoint_moved_to_the_rewritten_hash_has_an_invalid_signature(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    fill(log, 4)
    log.checkpoint(signing_key)
    drop_append_only_guards(log.engine)
    rewritten = _rewrite_from(log, 1)
    execute(log.engine, "UPDATE audit_checkpoints SET entry_hash = ?", [rewritten[3][9]])
    result = log.verify(public_keys=[signing_key.public_key()])
    assert [(p.kind, p.seq) for p in result.problems] == [(ProblemKind.FORGED_CHECKPOINT, 4)]
    assert "has an invalid signature" in result.problems[0].message


def test_a_checkpoint_signed_with_an_attackers_key_is_not_trusted(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    fill(log, 4)
    log.checkpoint(signing_key)
    drop_append_only_guards(log.engine)
    _rewrite_from(log, 1)
    execute(log.engine, "DELETE FROM audit_checkpoints")
    log.checkpoint(Ed25519PrivateKey.generate())  # signs the rewritten chain
    kind, seq, message = _first(log, public_keys=[signing_key.public_key()])
    assert (kind, seq) == (ProblemKind.UNVERIFIABLE_CHECKPOINT, 4)
    assert "is not among the public keys given" in message


def test_appending_after_rows_were_added_behind_the_head_says_so(filled: AuditLog) -> None:
    last = stored_rows(filled.engine)[-1]
    fields = (ENTRIES + 1, last[1], "eve", "admin", "login", "", "ok", "{}", last[9])
    execute(
        filled.engine,
        f"INSERT INTO audit_entries ({COLUMNS}) VALUES ({', '.join('?' * 10)})",
        (*fields, hash_entry(*fields)),
    )
    with pytest.raises(AuditWriteError, match=r"changed outside countyfl\.audit"):
        filled.append(actor="alice", role="clinician", action="login", target="", outcome="ok")


def test_reading_an_entry_with_an_impossible_outcome_names_it(filled: AuditLog) -> None:
    execute(filled.engine, "UPDATE audit_entries SET outcome = 'approved' WHERE seq = 3")
    with pytest.raises(AuditReadError, match=r"entry 3 of the audit log .* cannot be read"):
        filled.entries()
