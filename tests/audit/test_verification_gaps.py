"""Issue 13, finding 6: with the public key but no site copy, ``audit verify`` passed after
every entry and every checkpoint row was deleted; and checkpoints were manual only.

Now the log signs itself (every N entries or T seconds, and at shutdown), and verification
fails on an empty log, on a log no checkpoint vouches for, and on a log shorter than the
latest checkpoint the verifier knows of (its own memory of earlier runs); it says what it
compared against.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_testing import DatabaseSpec, drop_append_only_guards, execute, fill
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from countyfl.audit import AuditLog, AutoCheckpointer, ProblemKind
from countyfl.cli.audit import audit_app as app

runner = CliRunner()


@pytest.fixture(autouse=True)
def logged_in_auditor(monkeypatch: pytest.MonkeyPatch) -> None:
    # Who may verify is tested in test_audit_cli_permissions.py; logins would add entries.
    monkeypatch.setattr(
        "countyfl.cli.audit._require", lambda database_url, token, user, action: None
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checkpoints_are_signed_every_n_entries_every_t_seconds_and_at_close(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    clock = Clock()
    auto = AutoCheckpointer(log, signing_key, every_entries=5, every_seconds=60, clock=clock)
    assert auto.sign_if_due() is None, "nothing to sign in an empty log"
    fill(log, 4)
    assert auto.sign_if_due() is None, "4 entries, 0 s: not due"
    fill(log, 1)
    assert auto.sign_if_due().seq == 5  # type: ignore[union-attr]
    fill(log, 2)
    assert auto.sign_if_due() is None
    clock.now += 61
    assert auto.sign_if_due().seq == 7  # type: ignore[union-attr]
    clock.now += 61
    assert auto.sign_if_due() is None, "time passed but no entry was added"
    fill(log, 1)
    assert auto.close().seq == 8  # type: ignore[union-attr]
    assert auto.sign_if_due() is None, "closed"
    assert [c.seq for c in log.checkpoints()] == [5, 7, 8]
    # A new checkpointer with the same key goes on from the latest one.
    assert AutoCheckpointer(log, signing_key, every_entries=5, every_seconds=60).last_seq == 8


def test_a_tampered_log_is_not_signed_automatically(
    log: AuditLog, signing_key: Ed25519PrivateKey
) -> None:
    auto = AutoCheckpointer(log, signing_key, every_entries=1, every_seconds=60)
    fill(log, 3)
    drop_append_only_guards(log.engine)
    execute(log.engine, "UPDATE audit_entries SET actor = 'eve' WHERE seq = 2")
    assert auto.sign_if_due() is None
    assert log.checkpoints() == []


def test_an_emptied_log_fails_even_with_nothing_to_compare(log: AuditLog) -> None:
    fill(log, 3)
    drop_append_only_guards(log.engine)
    execute(log.engine, "DELETE FROM audit_entries")
    execute(log.engine, "UPDATE audit_head SET seq = 0, entry_hash = ? WHERE id = 1", ["0" * 64])
    result = log.verify()
    assert [problem.kind for problem in result.problems] == [ProblemKind.EMPTY]
    assert "holds no entry at all" in result.summary()


def _cli(database: DatabaseSpec, *arguments: str) -> tuple[int, str]:
    result = runner.invoke(app, ["verify", "--database-url", database.cli_url(), *arguments])
    return result.exit_code, " ".join(result.output.split())


def test_the_attack_deleting_every_entry_and_checkpoint_fails_verify(
    database: DatabaseSpec, signing_key_files: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = signing_key_files
    engine = database.create_engine()
    try:
        log = AuditLog(engine)
        fill(log, 6)
        assert (
            runner.invoke(
                app,
                ["checkpoint", "--signing-key", str(private), "--database-url", database.cli_url()],
            ).exit_code
            == 0
        )
        memory = tmp_path / "verifier" / "verified.jsonl"
        code, output = _cli(
            database, "--public-key", str(public), "--known-checkpoints", str(memory)
        )
        assert code == 0, output
        assert "Compared against: the log's head row (entry 6); 1 signed checkpoint(s)" in output
        assert memory.exists() and memory.stat().st_mode & 0o077 == 0

        # The attacker with database rights: drop the guards, cut the log back to 3 entries,
        # delete every checkpoint and move the head.
        drop_append_only_guards(engine)
        execute(engine, "DELETE FROM audit_entries WHERE seq > 3")
        execute(engine, "DELETE FROM audit_checkpoints")
        with engine.connect() as connection:
            third = connection.exec_driver_sql(
                "SELECT entry_hash FROM audit_entries WHERE seq = 3"
            ).scalar_one()
        execute(engine, "UPDATE audit_head SET seq = 3, entry_hash = ? WHERE id = 1", [third])

        code, output = _cli(
            database, "--public-key", str(public), "--known-checkpoints", str(memory)
        )
        assert code == 1, output
        assert "entries 4 to 6 are missing (removed)" in output
        assert "is in this verifier's copy" in output and "no longer in the database" in output
        assert f"1 in this verifier's copy {memory}" in output

        # Without the verifier's memory: no checkpoint vouches for the log any more.
        code, output = _cli(
            database, "--public-key", str(public), "--known-checkpoints", str(tmp_path / "new")
        )
        assert code == 1 and "no signed checkpoint vouches for the 3 entries" in output

        # Everything deleted: an empty log fails too.
        execute(engine, "DELETE FROM audit_entries")
        execute(engine, "UPDATE audit_head SET seq = 0, entry_hash = ? WHERE id = 1", ["0" * 64])
        code, output = _cli(
            database, "--public-key", str(public), "--known-checkpoints", str(tmp_path / "new")
        )
        assert code == 1 and "holds no entry at all" in output
    finally:
        engine.dispose()


@pytest.fixture
def signing_key_files(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "keys" / "audit.key"
    assert runner.invoke(app, ["keygen", "--out", str(path)]).exit_code == 0
    return path, path.with_name("audit.key.pub")
