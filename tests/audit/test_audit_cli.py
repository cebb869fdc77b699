"""The ``countyfl audit`` sub-app through typer's CliRunner: outputs and exit codes 0, 1, 2."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_testing import (
    DatabaseSpec,
    drop_append_only_guards,
    execute,
    fill,
    rehash,
    replace_chain,
    stored_rows,
)
from typer.testing import CliRunner

from countyfl.audit import AuditLog
from countyfl.cli.audit import audit_app as app

runner = CliRunner()


@pytest.fixture(autouse=True)
def logged_in_auditor(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """These tests are about the log itself: logins (which would add entries) are checked
    apart, against real users, in test_audit_cli_permissions.py."""
    checked: list[str] = []
    monkeypatch.setattr(
        "countyfl.cli.audit._require",
        lambda database_url, token, user, action: checked.append(action),
    )
    return checked


def _fill(spec: DatabaseSpec, count: int, *, start: datetime | None = None) -> None:
    engine = spec.create_engine()
    try:
        if start is None:
            fill(AuditLog(engine), count)
        else:
            times = iter(start + timedelta(hours=hour) for hour in range(count))
            fill(AuditLog(engine, clock=lambda: next(times)), count)
    finally:
        engine.dispose()


def _tamper(spec: DatabaseSpec, sql: str) -> None:
    engine = spec.create_engine()
    try:
        drop_append_only_guards(engine)
        execute(engine, sql)
    finally:
        engine.dispose()


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "audit.key"
    result = runner.invoke(app, ["keygen", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_keygen_writes_the_key_pair_and_refuses_to_overwrite(key: Path) -> None:
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.with_name("audit.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = runner.invoke(app, ["keygen", "--out", str(key)])
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output


def test_keygen_defaults_to_the_settings_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COUNTYFL_HOME", str(tmp_path / "home"))
    result = runner.invoke(app, ["keygen"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "keys" / "audit-signing.key").exists()
    assert (tmp_path / "home" / "keys" / "audit-signing.key.pub").exists()


def test_verify_checkpoint_and_tamper_round_trip(
    database: DatabaseSpec, key: Path, tmp_path: Path
) -> None:
    url = database.cli_url()
    public = str(key) + ".pub"
    _fill(database, 5)

    chain_only = runner.invoke(app, ["verify", "--database-url", url])
    assert chain_only.exit_code == 0, chain_only.output
    assert "hash chain intact: 5 entries. Only the hash chain was checked" in chain_only.output

    signed = runner.invoke(app, ["checkpoint", "--signing-key", str(key), "--database-url", url])
    assert signed.exit_code == 0, signed.output
    assert "signed checkpoint of entry 5" in signed.output
    copy = tmp_path / "site-copy.jsonl"
    exported = runner.invoke(app, ["export-checkpoints", "--out", str(copy), "--database-url", url])
    assert exported.exit_code == 0, exported.output
    assert len(copy.read_text().splitlines()) == 1

    intact = runner.invoke(
        app,
        ["verify", "--database-url", url, "--public-key", public, "--checkpoints", str(copy)],
    )
    assert intact.exit_code == 0, intact.output
    assert "audit log intact: 5 entries; 1 signed checkpoint verified and matched" in (
        intact.output
    )

    _tamper(database, "UPDATE audit_entries SET target = 'model:other' WHERE seq = 3")
    tampered = runner.invoke(app, ["verify", "--database-url", url, "--public-key", public])
    assert tampered.exit_code == 1, tampered.output
    assert "TAMPERED WITH: entry 3 was changed: its stored hash does not match its contents" in (
        tampered.output
    )


def test_verify_fails_on_a_rewritten_chain_only_with_the_public_key(
    sqlite_database: DatabaseSpec, key: Path
) -> None:
    url = sqlite_database.cli_url()
    _fill(sqlite_database, 4)
    signed = runner.invoke(app, ["checkpoint", "--signing-key", str(key), "--database-url", url])
    assert signed.exit_code == 0, signed.output
    engine = sqlite_database.create_engine()
    try:
        drop_append_only_guards(engine)
        rows = stored_rows(engine)
        rows[1] = (*rows[1][:2], "eve", *rows[1][3:])
        replace_chain(engine, rehash(rows, start=1))
    finally:
        engine.dispose()

    assert runner.invoke(app, ["verify", "--database-url", url]).exit_code == 0
    result = runner.invoke(app, ["verify", "--database-url", url, "--public-key", f"{key}.pub"])
    assert result.exit_code == 1
    assert "entry 4 does not match the checkpoint of entry 4" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--public-key", "absent.pub"], "cannot be read"),
        (["--checkpoints", "copy.jsonl"], "pass --public-key too"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_verify_usage_errors_exit_2(
    sqlite_database: DatabaseSpec, arguments: list[str], message: str
) -> None:
    result = runner.invoke(app, ["verify", "--database-url", sqlite_database.url, *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_verify_with_an_unusable_database_url_exits_2() -> None:
    result = runner.invoke(app, ["verify", "--database-url", "mysql://db/countyfl"])
    assert result.exit_code == 2
    assert "not supported" in result.output


def test_export_writes_json_lines_to_stdout_or_a_file(
    sqlite_database: DatabaseSpec, tmp_path: Path
) -> None:
    _fill(sqlite_database, 3, start=datetime(2026, 11, 28, 8, tzinfo=UTC))
    url = sqlite_database.url

    result = runner.invoke(app, ["export", "--database-url", url])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    assert "exported 3 entries to standard output" in result.stderr

    out = tmp_path / "since.jsonl"
    since = ["--since", "2026-11-28T09:00:00+00:00", "--out", str(out)]
    result = runner.invoke(app, ["export", "--database-url", url, *since])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [2, 3]


@pytest.mark.parametrize("command", ["export", "export-checkpoints"])
def test_an_export_to_a_file_that_cannot_be_written_exits_2(
    sqlite_database: DatabaseSpec, tmp_path: Path, command: str
) -> None:
    _fill(sqlite_database, 1, start=datetime(2026, 11, 28, 8, tzinfo=UTC))
    out = tmp_path / "no-such-folder" / "audit.jsonl"
    result = runner.invoke(app, [command, "--database-url", sqlite_database.url, "--out", str(out)])
    assert result.exit_code == 2
    assert "cannot be written" in result.output and not out.exists()


def test_export_with_a_bad_since_exits_2(sqlite_database: DatabaseSpec) -> None:
    result = runner.invoke(app, ["export", "--database-url", sqlite_database.url, "--since", "x"])
    assert result.exit_code == 2
    assert "not an ISO 8601 time" in result.output


def test_checkpoint_without_a_key_exits_2(sqlite_database: DatabaseSpec, tmp_path: Path) -> None:
    _fill(sqlite_database, 1)
    result = runner.invoke(
        app,
        ["checkpoint", "--database-url", sqlite_database.url, "--signing-key", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "countyfl audit keygen" in result.output


def test_checkpoint_over_a_tampered_log_exits_1(sqlite_database: DatabaseSpec, key: Path) -> None:
    _fill(sqlite_database, 3)
    _tamper(sqlite_database, "DELETE FROM audit_entries WHERE seq = 2")
    result = runner.invoke(
        app, ["checkpoint", "--database-url", sqlite_database.url, "--signing-key", str(key)]
    )
    assert result.exit_code == 1
    assert "refusing to sign" in result.output and "entry 2 is missing" in result.output
