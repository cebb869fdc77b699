"""`countyfl audit verify/export` log in and ask the registry's one permission table."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from countyfl.audit import AuditLog
from countyfl.cli.audit import audit_app as app
from countyfl.registry import Principal, Role, add_user, bootstrap_admin, create_api_token
from countyfl.storage import create_database_engine, upgrade

runner = CliRunner()


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[str, dict[Role, str]]:
    url = f"sqlite:///{tmp_path / 'countyfl.db'}"
    engine = create_database_engine(url)
    upgrade(engine)
    audit = AuditLog(engine)
    bootstrap_admin(engine, "ada", password="a long admin password", audit=audit)
    admin = Principal("ada", Role.ADMIN)
    issued: dict[Role, str] = {}
    for role in (Role.AUDITOR, Role.CLINICIAN, Role.ADMIN):
        name = f"user-{role.value}"
        if role is not Role.ADMIN:
            add_user(engine, name, role, password=None, principal=admin, audit=audit)
        owner = "ada" if role is Role.ADMIN else name
        token = create_api_token(engine, owner, name="cli", principal=admin, audit=audit)
        issued[role] = token.secret.get_secret_value()
    engine.dispose()
    return url, issued


@pytest.mark.parametrize(
    ("role", "command", "allowed"),
    [
        (Role.AUDITOR, "verify", True),
        (Role.AUDITOR, "export", True),
        (Role.ADMIN, "verify", True),
        (Role.ADMIN, "export", False),
        (Role.CLINICIAN, "verify", False),
        (Role.CLINICIAN, "export", False),
        (Role.CLINICIAN, "export-checkpoints", False),
    ],
)
def test_roles_against_audit_commands(
    tokens: tuple[str, dict[Role, str]], role: Role, command: str, allowed: bool
) -> None:
    url, issued = tokens
    result = runner.invoke(
        app, [command, "--database-url", url], env={"COUNTYFL_TOKEN": issued[role]}
    )
    if allowed:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 3, result.output
        assert "may not" in result.output or "not allowed" in result.output, result.output
        engine = create_database_engine(url)
        refused = [
            e for e in AuditLog(engine).entries() if e.outcome == "refused" and e.actor != ""
        ]
        engine.dispose()
        assert refused and refused[-1].action.startswith("audit."), refused


def test_without_a_token_verify_exits_3(
    tokens: tuple[str, dict[Role, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COUNTYFL_TOKEN", raising=False)
    result = runner.invoke(app, ["verify", "--database-url", tokens[0]])
    assert result.exit_code == 3
    assert "not authenticated" in result.output
