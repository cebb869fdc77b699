"""The ``countyfl users`` and ``countyfl registry`` commands (typer sub-apps).

Authentication: every command but ``users roles`` (static documentation) and the first-admin
bootstrap acts as a user. Give an API token with ``--token`` or the ``COUNTYFL_TOKEN``
environment variable, or ``--user NAME`` to be asked for that user's password (``--user``
wins over a token). While no user exists, ``users add NAME --role admin`` creates the first
admin without authentication.

Two people for privileged accounts: an admin who adds a researcher, regulator, node or
admin, gives a user such a role, sets such a user's password or issues a token acting as
one leaves it *pending*; a second admin approves it with ``users approve NAME`` or
``users approve-token ID``. Users set their own password (``users password`` with their own
name) and issue their own tokens (``users token`` with their own name) without approval.

Everything these commands print that a user or a file chose (run ids, token labels,
reasons, paths) goes through :func:`countyfl.terminal.shown`: control characters appear as
visible escapes and rich markup is escaped.

Exit codes
----------
0  done
1  refused by a registry rule or failed: a promotion gate, an artifact whose sha256 does
   not match, disabling the last admin, an audit entry that could not be written
2  bad usage or input: an unknown option or role, a malformed published folder, a short
   password, a name that is taken
3  not authenticated, or the role lacks the permission (see ``countyfl users roles``)
4  not found: no such user, token or model version
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from countyfl.cli.common import (
    DatabaseUrlOption,
    ExitCode,
    TokenOption,
    UserOption,
    acting,
    connect,
    exit_codes,
    fail,
    login,
    stderr,
    stdout,
)
from countyfl.registry.permissions import ACTION_DESCRIPTIONS, PERMISSIONS, Action
from countyfl.registry.published import register_published
from countyfl.registry.roles import Role
from countyfl.registry.schemas import MAX_VERSION, ModelVersionPublic, Stage
from countyfl.registry.users import (
    add_user,
    approve_api_token,
    approve_user,
    bootstrap_admin,
    count_users,
    create_api_token,
    disable_user,
    enable_user,
    list_api_tokens,
    list_users,
    revoke_api_token,
    set_password,
    set_role,
)
from countyfl.registry.versions import (
    archive,
    get_version,
    list_thresholds,
    list_versions,
    promote,
    set_threshold,
)
from countyfl.terminal import shown

users_app = typer.Typer(
    help="Users, roles and API tokens of the registry and the API.",
    no_args_is_help=True,
    add_completion=False,
)
registry_app = typer.Typer(
    help="Model versions: lineage, promotion thresholds, promotion and archival.",
    no_args_is_help=True,
    add_completion=False,
)

PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="read the new password from standard input"),
]


def _pending_note(pending: bool, what: str) -> str:
    if not pending:
        return ""
    return (
        f" It is pending: {what} works once a second admin approves it "
        "(`countyfl users approve` / `countyfl users approve-token`)."
    )


def _new_password(name: str, from_stdin: bool, no_password: bool) -> str | None:
    if no_password:
        return None
    if from_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            fail("--password-stdin: standard input held no password", ExitCode.USAGE)
        return line.rstrip("\r\n")
    password: str = typer.prompt(
        f"New password of {name}", hide_input=True, confirmation_prompt=True, err=True
    )
    return password


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


# -- users ---------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="user name (lowercase, e.g. rita or county-node)")],
    role: Annotated[Role, typer.Option("--role", help="the user's role")],
    password_stdin: PasswordStdinOption = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="token-only identity (e.g. a node)")
    ] = False,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Add a user; while there is none, this creates the first admin without authentication."""
    with exit_codes():
        context = connect(database_url)
        try:
            if count_users(context.engine) == 0:
                if role is not Role.ADMIN:
                    fail(
                        f"there are no users yet, so the first one must be an admin: "
                        f"countyfl users add {name} --role admin",
                        ExitCode.USAGE,
                    )
                if no_password:
                    fail(
                        "the first admin needs a password: without one nobody could log in "
                        "to issue tokens or add users",
                        ExitCode.USAGE,
                    )
                password = _new_password(name, password_stdin, no_password)
                created = bootstrap_admin(
                    context.engine, name, password=password, audit=context.audit
                )
                stdout().print(f"Created the first admin, {shown(created.username)}.")
                return
            principal = login(context, token, user)
            password = _new_password(name, password_stdin, no_password)
            created = add_user(
                context.engine,
                name,
                role,
                password=password,
                principal=principal,
                audit=context.audit,
            )
            stdout().print(
                f"Added {shown(created.username)} ({created.role.value})."
                + _pending_note(created.pending_approval, "the account")
            )
        finally:
            context.engine.dispose()


@users_app.command("list")
def users_list(
    database_url: DatabaseUrlOption = None, token: TokenOption = None, user: UserOption = None
) -> None:
    """List every user with role and status."""
    with acting(database_url, token, user) as actor:
        users = list_users(actor.engine, principal=actor.principal, audit=actor.audit)
    table = Table("user", "role", "status", "login", "created")
    for item in users:
        if item.disabled:
            status = "[red]disabled[/red]"
        elif item.pending_approval:
            status = f"[yellow]pending approval[/yellow] (by {shown(item.changed_by)})"
        else:
            status = "active"
        table.add_row(
            shown(item.username),
            item.role.value,
            status,
            "password" if item.has_password else "token only",
            _when(item.created_at),
        )
    stdout().print(table)


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="user to disable")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Disable a user: its password and API tokens stop working."""
    with acting(database_url, token, user) as actor:
        disable_user(actor.engine, name, principal=actor.principal, audit=actor.audit)
    stdout().print(f"Disabled {shown(name)}.")


@users_app.command("enable")
def users_enable(
    name: Annotated[str, typer.Argument(help="user to enable")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Enable a disabled user again."""
    with acting(database_url, token, user) as actor:
        enable_user(actor.engine, name, principal=actor.principal, audit=actor.audit)
    stdout().print(f"Enabled {shown(name)}.")


@users_app.command("password")
def users_password(
    name: Annotated[str, typer.Argument(help="user whose password to set")],
    password_stdin: PasswordStdinOption = False,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Set a user's password (your own, or as an admin another user's).

    An admin setting another privileged user's password leaves that account pending until
    a second admin approves it.
    """
    with acting(database_url, token, user) as actor:
        password = _new_password(name, password_stdin, no_password=False) or ""
        set_password(actor.engine, name, password, principal=actor.principal, audit=actor.audit)
        own = actor.principal.username == name
    note = "" if own else " If the account is privileged it now waits for a second admin."
    stdout().print(f"Set the password of {shown(name)}.{note}")


@users_app.command("approve")
def users_approve(
    name: Annotated[str, typer.Argument(help="user whose pending account or change to approve")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Approve, as a second admin, a privileged account, role or password another admin gave."""
    with acting(database_url, token, user) as actor:
        approved = approve_user(actor.engine, name, principal=actor.principal, audit=actor.audit)
    stdout().print(f"Approved {shown(approved.username)} ({approved.role.value}).")


@users_app.command("role")
def users_role(
    name: Annotated[str, typer.Argument(help="user whose role to change")],
    role: Annotated[Role, typer.Option("--role", help="the new role")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Give a user another role; a privileged role waits for a second admin's approval."""
    with acting(database_url, token, user) as actor:
        changed = set_role(actor.engine, name, role, principal=actor.principal, audit=actor.audit)
    stdout().print(
        f"{shown(changed.username)} now has the role {changed.role.value}."
        + _pending_note(changed.pending_approval, "the account")
    )


@users_app.command("token")
def users_token(
    name: Annotated[str, typer.Argument(help="user the token acts as")],
    label: Annotated[
        str, typer.Option("--name", help="what the token is for, e.g. county-aggregator")
    ] = "api",
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", min=1, help="default: never expires")
    ] = None,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Issue an API token for a user and print it, once (only its sha256 is kept).

    Issue your own tokens with your own name. A token an admin issues to act as another
    privileged user waits for a second admin (`countyfl users approve-token ID`).
    """
    expires_at = (
        None if expires_in_days is None else datetime.now(UTC) + timedelta(days=expires_in_days)
    )
    with acting(database_url, token, user) as actor:
        issued = create_api_token(
            actor.engine,
            name,
            name=label,
            expires_at=expires_at,
            principal=actor.principal,
            audit=actor.audit,
        )
    # The secret alone goes to standard output, so that it can be captured by a script.
    print(issued.secret.get_secret_value())
    stderr().print(
        f"Token {issued.token.id} ({shown(issued.token.name)}) for {shown(name)}, expires "
        f"{_when(issued.token.expires_at)}. It is shown only now: store it in a secret store."
        + _pending_note(issued.token.pending_approval, "the token")
    )


@users_app.command("approve-token")
def users_approve_token(
    token_id: Annotated[int, typer.Argument(help="id from `countyfl users tokens`", min=1)],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Approve, as a second admin, a token another admin issued to act as a privileged user."""
    with acting(database_url, token, user) as actor:
        approved = approve_api_token(
            actor.engine, token_id, principal=actor.principal, audit=actor.audit
        )
    stdout().print(
        f"Approved token {approved.id} ({shown(approved.name)}) of {shown(approved.owner)}."
    )


@users_app.command("tokens")
def users_tokens(
    owner: Annotated[str | None, typer.Option("--owner", help="only this user's tokens")] = None,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """List API tokens (never their secrets)."""
    with acting(database_url, token, user) as actor:
        tokens = list_api_tokens(
            actor.engine, owner=owner, principal=actor.principal, audit=actor.audit
        )
    table = Table("id", "name", "owner", "fingerprint", "created", "expires", "status")
    for item in tokens:
        if item.revoked:
            status = "[red]revoked[/red]"
        elif item.pending_approval:
            status = f"[yellow]pending approval[/yellow] (issued by {shown(item.issued_by)})"
        else:
            status = "active"
        table.add_row(
            str(item.id),
            shown(item.name),
            shown(item.owner),
            item.fingerprint,
            _when(item.created_at),
            _when(item.expires_at),
            status,
        )
    stdout().print(table)


@users_app.command("revoke-token")
def users_revoke_token(
    token_id: Annotated[int, typer.Argument(help="id from `countyfl users tokens`")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Revoke an API token for good."""
    with acting(database_url, token, user) as actor:
        revoked = revoke_api_token(
            actor.engine, token_id, principal=actor.principal, audit=actor.audit
        )
    stdout().print(f"Revoked token {revoked.id} ({shown(revoked.name)}) of {shown(revoked.owner)}.")


@users_app.command("whoami")
def users_whoami(
    database_url: DatabaseUrlOption = None, token: TokenOption = None, user: UserOption = None
) -> None:
    """Show who the given token or user acts as."""
    with acting(database_url, token, user) as actor:
        principal = actor.principal
    stdout().print(f"{shown(principal.username)} ({principal.role.value})")


@users_app.command("roles")
def users_roles() -> None:
    """Print the permission matrix: which role may do what (no authentication needed)."""
    table = Table("action", *(role.value for role in Role), "what it allows", title="Permissions")
    for action in Action:
        marks = ("[green]yes[/green]" if action in PERMISSIONS[role] else "-" for role in Role)
        table.add_row(action.value, *marks, ACTION_DESCRIPTIONS[action])
    stdout().print(table)
    stdout().print(
        "Besides the role, a promotion needs a second person: whoever registered a version "
        "may not promote it. A privileged account (admin, researcher, regulator, node), role, "
        "password or token one admin gives works only once a second admin approves it."
    )


# -- registry ------------------------------------------------------------------------------


def _metrics_text(metrics: dict[str, float | None]) -> str:
    """Metrics as plain text (pass it through :func:`shown` before printing)."""
    return ", ".join(
        f"{name} {'n/a' if value is None else f'{value:.3f}'}" for name, value in metrics.items()
    )


@registry_app.command("list")
def registry_list(
    name: Annotated[str | None, typer.Option("--name", help="only this model name")] = None,
    stage: Annotated[Stage | None, typer.Option("--stage", help="only this stage")] = None,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """List model versions (clinicians see production versions only)."""
    with acting(database_url, token, user) as actor:
        versions = list_versions(
            actor.engine, name=name, stage=stage, principal=actor.principal, audit=actor.audit
        )
    table = Table("model", "version", "stage", "architecture", "run", "sites", "metrics", "by")
    for item in versions:
        colour = {"production": "green", "archived": "dim"}.get(item.stage.value, "yellow")
        measured = item.evaluation.metrics if item.evaluation is not None else None
        table.add_row(
            shown(item.name),
            str(item.version),
            f"[{colour}]{item.stage.value}[/{colour}]",
            shown(item.architecture),
            shown(item.run_id),
            str(len(item.institutions)),
            shown(
                "reported: "
                + _metrics_text(item.metrics.federated)
                + ("" if measured is None else "; measured: " + _metrics_text(measured))
            ),
            shown(item.registered_by),
        )
    stdout().print(table if versions else "No model versions.")


def _show(version: ModelVersionPublic) -> None:
    console = stdout()
    console.print(
        f"[bold]{shown(version.name)} v{version.version}[/bold]  stage: {version.stage.value}"
    )
    evaluation = version.evaluation
    facts = [
        ("architecture", version.architecture),
        ("run", f"{version.run_id} (scenario {version.scenario}, {version.rounds} rounds)"),
        ("task manifest", version.task_manifest_hash or "-"),
        ("artifact", version.artifact_uri),
        ("artifact sha256", version.artifact_sha256),
        ("registered", f"{_when(version.created_at)} by {version.registered_by}"),
        ("published", _when(version.published_at)),
        (
            "encryption",
            "none (plaintext aggregation)"
            if version.encryption is None
            else ", ".join(f"{key}={value}" for key, value in version.encryption.items()),
        ),
        ("reported metrics", _metrics_text(version.metrics.federated) or "-"),
        (
            "measured metrics",
            "- (measured on held-out data at promotion)"
            if evaluation is None
            else f"{_metrics_text(evaluation.metrics)} on {evaluation.rows} held-out rows "
            f"(sha256 {evaluation.data_sha256[:12]}...) by {evaluation.evaluated_by}",
        ),
    ]
    for label, value in facts:
        console.print(f"  {label:<18} {shown(value)}")

    sites = Table("institution", "epsilon", "delta", "metrics", title="Institutions")
    for item in version.institutions:
        sites.add_row(
            shown(item.institution),
            "no DP" if item.epsilon is None else f"{item.epsilon:.3g}",
            "-" if item.delta is None else f"{item.delta:.2g}",
            shown(_metrics_text(version.metrics.per_institution.get(item.institution, {}))) or "-",
        )
    console.print(sites)
    history = Table("when", "from", "to", "by", "reason", title="Stage history")
    for change in version.history:
        history.add_row(
            _when(change.changed_at),
            "-" if change.from_stage is None else change.from_stage.value,
            change.to_stage.value,
            shown(change.changed_by),
            shown(change.reason),
        )
    console.print(history)


@registry_app.command("show")
def registry_show(
    name: Annotated[str, typer.Argument(help="model name, e.g. heart-disease-diagnosis")],
    version: Annotated[
        int | None,
        typer.Option(
            "--version", min=1, max=MAX_VERSION, help="default: production, else the newest"
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Show a version's lineage: run, institutions with their epsilon, metrics, history."""
    with acting(database_url, token, user) as actor:
        found = get_version(
            actor.engine, name, version, principal=actor.principal, audit=actor.audit
        )
    _show(found)


@registry_app.command("register")
def registry_register(
    folder: Annotated[Path, typer.Argument(help="folder written by `countyfl model publish`")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Register a published model folder as a new candidate version."""
    with acting(database_url, token, user) as actor:
        version = register_published(
            actor.engine, folder, principal=actor.principal, audit=actor.audit
        )
    stdout().print(
        f"Registered {shown(version.name)} v{version.version} as a candidate "
        f"(artifact sha256 {version.artifact_sha256[:12]}...)."
    )


@registry_app.command("promote")
def registry_promote(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int, typer.Argument(min=1, max=MAX_VERSION, help="version number")],
    evaluation_data: Annotated[
        Path,
        typer.Option(
            "--evaluation-data",
            help="held-out CSV: one column per feature of the model's input transform and "
            "'label' (0/1); the registry measures the thresholded metrics on it",
            show_default=False,
        ),
    ],
    reason: Annotated[str, typer.Option("--reason", help="why, for the stage history")] = "",
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Promote a candidate to production: the registry measures it on your held-out data.

    Every threshold of the model must be met by the metrics measured on --evaluation-data
    (not by the metrics the run reported), and whoever registered the version may not
    promote it.
    """
    from countyfl.registry.evaluation import read_evaluation_csv

    with acting(database_url, token, user) as actor:
        data = read_evaluation_csv(evaluation_data)
        promoted = promote(
            actor.engine,
            name,
            version,
            evaluation=data,
            principal=actor.principal,
            audit=actor.audit,
            reason=reason,
        )
    measured = promoted.evaluation
    stdout().print(
        f"{shown(promoted.name)} v{promoted.version} is in production; the version it "
        "replaced, if any, is archived."
        + (
            ""
            if measured is None
            else f" Measured on {measured.rows} held-out rows: "
            + shown(_metrics_text(measured.metrics))
            + "."
        )
    )


@registry_app.command("archive")
def registry_archive(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int, typer.Argument(min=1, max=MAX_VERSION, help="version number")],
    reason: Annotated[str, typer.Option("--reason", help="why, for the stage history")] = "",
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Archive a candidate or production version."""
    with acting(database_url, token, user) as actor:
        archived = archive(
            actor.engine,
            name,
            version,
            principal=actor.principal,
            audit=actor.audit,
            reason=reason,
        )
    stdout().print(f"{shown(archived.name)} v{archived.version} is archived.")


@registry_app.command("threshold")
def registry_threshold(
    name: Annotated[str, typer.Argument(help="model name")],
    metric: Annotated[str, typer.Argument(help="measured metric: auc or accuracy")],
    minimum: Annotated[float, typer.Argument(help="the least value a promotion needs (0.5 to 1)")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Set the minimum a measured metric of NAME's versions needs for promotion."""
    with acting(database_url, token, user) as actor:
        threshold = set_threshold(
            actor.engine, name, metric, minimum, principal=actor.principal, audit=actor.audit
        )
    stdout().print(
        f"Promotions of {shown(threshold.model_name)} now need a measured "
        f"{shown(threshold.metric)} >= {threshold.minimum:g}."
    )


@registry_app.command("thresholds")
def registry_thresholds(
    name: Annotated[str | None, typer.Argument(help="only this model name")] = None,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """List the promotion thresholds."""
    with acting(database_url, token, user) as actor:
        thresholds = list_thresholds(
            actor.engine, model_name=name, principal=actor.principal, audit=actor.audit
        )
    table = Table("model", "metric", "minimum", "set by", "set at")
    for item in thresholds:
        table.add_row(
            shown(item.model_name),
            shown(item.metric),
            f"{item.minimum:g}",
            shown(item.set_by),
            _when(item.set_at),
        )
    stdout().print(table if thresholds else "No thresholds set.")
