"""The ``users`` and ``registry`` sub-apps through typer's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result
from registry_support import RecordingSink, heldout, publish_folder
from typer.testing import CliRunner

from countyfl.cli import common
from countyfl.cli.common import ExitCode
from countyfl.cli.registry import registry_app, users_app
from countyfl.registry import PERMISSIONS, PRIVILEGED_ROLES, Action, Role
from countyfl.registry.evaluation import to_csv

PASSWORD = "correct horse battery staple"
MODEL = "heart-disease-diagnosis"


class Cli:
    """Runs the sub-apps against one database, with a recording audit sink."""

    def __init__(self, url: str, sink: RecordingSink) -> None:
        self.url = url
        self.sink = sink
        self.runner = CliRunner()

    def run(
        self,
        app: str,
        *args: str,
        token: str | None = None,
        input: str | None = None,
    ) -> Result:
        env = {"COLUMNS": "250", "COUNTYFL_TOKEN": token or ""}
        return self.runner.invoke(
            users_app if app == "users" else registry_app,
            [*args, "--database-url", self.url],
            input=input,
            env=env,
        )

    second_admin_token = ""

    def token_for(self, admin_token: str, name: str, role: str) -> str:
        """A user of ``role`` added by ada, approved by adam where the role needs it."""
        added = self.run("users", "add", name, "--role", role, "--no-password", token=admin_token)
        assert added.exit_code == 0, added.output
        privileged = Role(role) in PRIVILEGED_ROLES
        assert ("pending" in added.stdout) is privileged
        if privileged:
            approved = self.run("users", "approve", name, token=self.second_admin_token)
            assert approved.exit_code == 0, approved.output
        issued = self.run("users", "token", name, "--name", f"{name}-cli", token=admin_token)
        assert issued.exit_code == 0, issued.output
        if privileged:
            number = issued.stderr.split("Token ", 1)[1].split(" ", 1)[0]
            approved = self.run("users", "approve-token", number, token=self.second_admin_token)
            assert approved.exit_code == 0, approved.output
        return issued.stdout.strip()

    def bootstrap(self) -> str:
        """ada (the first admin) and adam (the second, added by ada); ada's token."""
        created = self.run(
            "users", "add", "ada", "--role", "admin", "--password-stdin", input=f"{PASSWORD}\n"
        )
        assert created.exit_code == 0, created.output
        issued = self.run(
            "users", "token", "ada", "--name", "ada-cli", "--user", "ada", input=f"{PASSWORD}\n"
        )
        assert issued.exit_code == 0, issued.output
        token = issued.stdout.strip()
        second = self.run(
            "users",
            "add",
            "adam",
            "--role",
            "admin",
            "--password-stdin",
            token=token,
            input=f"{PASSWORD}\n",
        )
        assert second.exit_code == 0 and "pending" not in second.stdout, second.output
        own = self.run(
            "users", "token", "adam", "--name", "adam-cli", "--user", "adam", input=f"{PASSWORD}\n"
        )
        assert own.exit_code == 0, own.output
        self.second_admin_token = own.stdout.strip()
        return token


@pytest.fixture
def cli_runner(db_url: str, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setattr(common, "open_audit_sink", lambda engine: sink)
    return Cli(db_url, sink)


def test_bootstrap_admin_then_token_auth_through_the_environment(cli_runner: Cli) -> None:
    first = cli_runner.run("users", "add", "rita", "--role", "researcher", "--no-password")
    assert first.exit_code == ExitCode.USAGE
    assert "first one must be an admin" in first.output
    locked_out = cli_runner.run("users", "add", "ada", "--role", "admin", "--no-password")
    assert locked_out.exit_code == ExitCode.USAGE
    assert "first admin needs a password" in locked_out.output

    admin_token = cli_runner.bootstrap()
    assert admin_token.startswith("cfl_")
    assert "Password" not in admin_token, "prompts go to stderr, the token alone to stdout"

    unauthenticated = cli_runner.run(
        "users", "add", "rita", "--role", "researcher", "--no-password"
    )
    assert unauthenticated.exit_code == ExitCode.NOT_ALLOWED
    assert "not authenticated" in unauthenticated.output

    added = cli_runner.run(
        "users",
        "add",
        "rita",
        "--role",
        "researcher",
        "--password-stdin",
        token=admin_token,
        input=f"{PASSWORD}\n",
    )
    assert added.exit_code == 0, added.output
    listed = cli_runner.run("users", "list", token=admin_token)
    assert listed.exit_code == 0, listed.output
    assert "rita" in listed.stdout and "pending approval (by ada)" in listed.stdout
    pending = cli_runner.run("users", "whoami", "--user", "rita", input=f"{PASSWORD}\n")
    assert pending.exit_code == ExitCode.NOT_ALLOWED
    own = cli_runner.run("users", "approve", "rita", token=admin_token)
    assert own.exit_code == ExitCode.NOT_ALLOWED and "second admin" in own.stderr
    approved = cli_runner.run("users", "approve", "rita", token=cli_runner.second_admin_token)
    assert approved.exit_code == 0, approved.output
    whoami = cli_runner.run("users", "whoami", "--user", "rita", input=f"{PASSWORD}\n")
    assert whoami.stdout.strip().endswith("rita (researcher)")

    logins = cli_runner.sink.of("login", "ok")
    assert {entry["details"]["method"] for entry in logins} == {"password", "token"}
    assert PASSWORD not in str(cli_runner.sink.entries)
    assert admin_token not in str(cli_runner.sink.entries)


def test_a_missing_permission_exits_3_with_a_clear_message(cli_runner: Cli) -> None:
    admin_token = cli_runner.bootstrap()
    researcher = cli_runner.token_for(admin_token, "rita", "researcher")

    denied = cli_runner.run("users", "list", token=researcher)
    assert denied.exit_code == ExitCode.NOT_ALLOWED
    assert "permission denied" in denied.stderr
    assert "'rita'" in denied.stderr and "user.manage" in denied.stderr
    assert cli_runner.sink.last["outcome"] == "refused"

    wrong = cli_runner.run("users", "list", "--token", "cfl_not-a-real-token", token=researcher)
    assert wrong.exit_code == ExitCode.NOT_ALLOWED
    assert "authentication failed" in wrong.stderr, "--token wins over COUNTYFL_TOKEN"
    assert cli_runner.sink.last["details"]["reason"] == "unknown-token"


def test_register_threshold_promote_show_and_list(cli_runner: Cli, tmp_path: Path) -> None:
    admin_token = cli_runner.bootstrap()
    researcher = cli_runner.token_for(admin_token, "rita", "researcher")
    regulator = cli_runner.token_for(admin_token, "reg", "regulator")
    clinician = cli_runner.token_for(admin_token, "chen", "clinician")

    folder = publish_folder(tmp_path / "published")
    registered = cli_runner.run("registry", "register", str(folder), token=researcher)
    assert registered.exit_code == 0, registered.output
    assert f"Registered {MODEL} v1 as a candidate" in registered.stdout

    data = tmp_path / "heldout.csv"
    held = heldout()
    data.write_text(to_csv(held.names, held.features, held.labels))
    evaluation = ("--evaluation-data", str(data))
    no_gate = cli_runner.run("registry", "promote", MODEL, "1", *evaluation, token=regulator)
    assert no_gate.exit_code == ExitCode.REFUSED
    assert f"countyfl registry threshold {MODEL}" in no_gate.stderr

    not_admin = cli_runner.run("registry", "threshold", MODEL, "auc", "0.8", token=regulator)
    assert not_admin.exit_code == ExitCode.NOT_ALLOWED
    threshold = cli_runner.run("registry", "threshold", MODEL, "auc", "0.8", token=admin_token)
    assert threshold.exit_code == 0, threshold.output

    no_data = cli_runner.run("registry", "promote", MODEL, "1", token=regulator)
    assert no_data.exit_code == ExitCode.USAGE and "--evaluation-data" in no_data.output
    promoted = cli_runner.run(
        "registry", "promote", MODEL, "1", *evaluation, "--reason", "reviewed", token=regulator
    )
    assert promoted.exit_code == 0, promoted.output
    assert "Measured on 200 held-out rows: accuracy" in promoted.stdout
    again = cli_runner.run("registry", "promote", MODEL, "1", *evaluation, token=regulator)
    assert again.exit_code == ExitCode.REFUSED

    listed = cli_runner.run("registry", "list", token=clinician)
    assert listed.exit_code == 0, listed.output
    assert MODEL in listed.stdout and "production" in listed.stdout

    shown = cli_runner.run("registry", "show", MODEL, token=clinician)
    assert shown.exit_code == 0, shown.output
    for expected in ("cleveland", "0.95", "hungary", "1.1", "run-42", "reviewed", "auc 0.840"):
        assert expected in shown.stdout, expected
    assert "measured metrics" in shown.stdout and "200 held-out rows" in shown.stdout

    missing = cli_runner.run("registry", "show", "no-such-model", token=clinician)
    assert missing.exit_code == ExitCode.NOT_FOUND
    missing_version = cli_runner.run("registry", "archive", MODEL, "7", token=regulator)
    assert missing_version.exit_code == ExitCode.NOT_FOUND

    broken = publish_folder(tmp_path / "broken", rounds=0)
    bad = cli_runner.run("registry", "register", str(broken), token=researcher)
    assert bad.exit_code == ExitCode.USAGE
    assert "'rounds'" in bad.stderr

    archived = cli_runner.run("registry", "archive", MODEL, "1", token=admin_token)
    assert archived.exit_code == 0, archived.output


def test_bad_usage_exits_2(cli_runner: Cli) -> None:
    admin_token = cli_runner.bootstrap()
    unknown_role = cli_runner.run(
        "users", "add", "x", "--role", "wizard", "--no-password", token=admin_token
    )
    assert unknown_role.exit_code == ExitCode.USAGE
    short = cli_runner.run(
        "users",
        "add",
        "rita",
        "--role",
        "researcher",
        "--password-stdin",
        token=admin_token,
        input="short\n",
    )
    assert short.exit_code == ExitCode.USAGE
    assert "at least 12" in short.stderr


def test_users_roles_prints_the_matrix_without_a_database() -> None:
    result = CliRunner().invoke(users_app, ["roles"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    printed: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 2 + len(Role):
            roles = [
                role.value for role, mark in zip(Role, cells[1:-1], strict=True) if mark == "yes"
            ]
            printed[cells[0]] = set(roles)
    assert printed == {
        action.value: {role.value for role in Role if action in PERMISSIONS[role]}
        for action in Action
    }
    assert "second person" in result.stdout


def test_stored_text_with_escapes_and_markup_prints_inert(cli_runner: Cli, tmp_path: Path) -> None:
    """Finding 9: ANSI escapes and rich markup in run ids and token labels reached the terminal.

    Registration refuses control characters now; rows an older version stored are still
    printed inert.
    """
    from sqlalchemy import text

    from countyfl.storage import create_database_engine

    admin_token = cli_runner.bootstrap()
    researcher = cli_runner.token_for(admin_token, "rita", "researcher")
    folder = publish_folder(tmp_path / "published", run_id="run\x1b[2J-42")
    refused = cli_runner.run("registry", "register", str(folder), token=researcher)
    assert refused.exit_code == ExitCode.USAGE and "'run_id'" in refused.stderr
    folder = publish_folder(tmp_path / "ok")
    assert cli_runner.run("registry", "register", str(folder), token=researcher).exit_code == 0
    evil = "\x1b]0;pwned\x07\x1b[2J[link=https://evil.example]run[/link][red]ok[/red]"
    engine = create_database_engine(cli_runner.url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE registry_model_versions SET run_id = :v"), {"v": evil})
        connection.execute(text("UPDATE api_tokens SET name = :v"), {"v": evil})
    engine.dispose()
    outputs = [
        cli_runner.run("registry", "list", token=researcher).stdout,
        cli_runner.run("registry", "show", MODEL, token=researcher).stdout,
        cli_runner.run("users", "tokens", token=admin_token).stdout,
    ]
    for output in outputs:
        assert "\x1b" not in output and "\x07" not in output, output
        assert "\\x1b" in output and "[red]" in output
