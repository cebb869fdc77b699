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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from countyfl.errors import ConfigError, CountyflError
from countyfl.registry.audit_sink import AuditSink
from countyfl.registry.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BootstrapError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from countyfl.registry.permissions import ACTION_DESCRIPTIONS, PERMISSIONS, Action
from countyfl.registry.published import register_published
from countyfl.registry.roles import Principal, Role
from countyfl.registry.schemas import MAX_VERSION, ModelVersionPublic, Stage
from countyfl.registry.users import (
    add_user,
    approve_api_token,
    approve_user,
    authenticate_password,
    authenticate_token,
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


class ExitCode(IntEnum):
    """Exit status of the ``users`` and ``registry`` commands."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    NOT_ALLOWED = 3
    NOT_FOUND = 4


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

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL of the registry [default: COUNTYFL_DATABASE_URL, else SQLite "
        "under COUNTYFL_HOME]",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="COUNTYFL_TOKEN",
        help="API token to act with",
        show_default=False,
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", help="act as this user; asks for its password", show_default=False),
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="read the new password from standard input"),
]


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(code: ExitCode, message: str) -> NoReturn:
    _err().print(f"[red]error:[/red] {shown(message)}")
    raise typer.Exit(code=int(code))


def exit_code_of(error: CountyflError) -> ExitCode:
    """The exit code a countyfl error ends a command with."""
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return ExitCode.NOT_ALLOWED
    if isinstance(error, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(error, InvalidInputError | AlreadyExistsError | BootstrapError | ConfigError):
        return ExitCode.USAGE
    return ExitCode.REFUSED


def _pending_note(pending: bool, what: str) -> str:
    if not pending:
        return ""
    return (
        f" It is pending: {what} works once a second admin approves it "
        "(`countyfl users approve` / `countyfl users approve-token`)."
    )


@contextmanager
def _exit_codes() -> Iterator[None]:
    try:
        yield
    except CountyflError as error:
        _fail(exit_code_of(error), str(error))
    except SQLAlchemyError as error:
        # The engine hides statement parameters, so this never prints a row's values.
        _fail(ExitCode.REFUSED, f"the database failed: {error}")


def open_audit_sink(engine: Engine) -> AuditSink:
    """The audit log of ``engine``'s database (imported here: the library never needs it)."""
    from countyfl.audit import AuditLog

    return AuditLog(engine)


@dataclass(frozen=True)
class _Context:
    engine: Engine
    audit: AuditSink


def _connect(database_url: str | None) -> _Context:
    from countyfl.settings import Settings
    from countyfl.storage import create_database_engine, upgrade

    url = database_url or Settings().resolved_database_url()
    # hide_parameters: a failing statement must not print a password hash in a traceback.
    engine = create_database_engine(url, hide_parameters=True)
    upgrade(engine)
    return _Context(engine, open_audit_sink(engine))


def _login(context: _Context, token: str | None, user: str | None) -> Principal:
    if user is not None:
        password = typer.prompt(f"Password of {user}", hide_input=True, err=True)
        return authenticate_password(context.engine, user, password, audit=context.audit)
    if token:
        return authenticate_token(context.engine, token, audit=context.audit)
    _fail(
        ExitCode.NOT_ALLOWED,
        "not authenticated: give an API token with --token or COUNTYFL_TOKEN, or --user NAME "
        "to be asked for a password",
    )


@dataclass(frozen=True)
class _Acting:
    engine: Engine
    audit: AuditSink
    principal: Principal


@contextmanager
def _acting(database_url: str | None, token: str | None, user: str | None) -> Iterator[_Acting]:
    with _exit_codes():
        context = _connect(database_url)
        try:
            yield _Acting(context.engine, context.audit, _login(context, token, user))
        finally:
            context.engine.dispose()


def require_permission(
    database_url: str | None, token: str | None, user: str | None, action: Action, target: str
) -> Principal:
    """Log in and check ``action`` for another command group (e.g. ``countyfl audit``).

    Exits 3 with a clear message when not logged in or not allowed (the refusal is audited
    by :func:`authorize`); the one permission table decides, as for every other command.
    """
    from countyfl.registry.permissions import authorize

    with _acting(database_url, token, user) as acting:
        authorize(acting.principal, action, audit=acting.audit, target=target)
        return acting.principal


def _new_password(name: str, from_stdin: bool, no_password: bool) -> str | None:
    if no_password:
        return None
    if from_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            _fail(ExitCode.USAGE, "--password-stdin: standard input held no password")
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
    with _exit_codes():
        context = _connect(database_url)
        try:
            if count_users(context.engine) == 0:
                if role is not Role.ADMIN:
                    _fail(
                        ExitCode.USAGE,
                        f"there are no users yet, so the first one must be an admin: "
                        f"countyfl users add {name} --role admin",
                    )
                if no_password:
                    _fail(
                        ExitCode.USAGE,
                        "the first admin needs a password: without one nobody could log in "
                        "to issue tokens or add users",
                    )
                password = _new_password(name, password_stdin, no_password)
                created = bootstrap_admin(
                    context.engine, name, password=password, audit=context.audit
                )
                _out().print(f"Created the first admin, {shown(created.username)}.")
                return
            principal = _login(context, token, user)
            password = _new_password(name, password_stdin, no_password)
            created = add_user(
                context.engine,
                name,
                role,
                password=password,
                principal=principal,
                audit=context.audit,
            )
            _out().print(
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
    with _acting(database_url, token, user) as acting:
        users = list_users(acting.engine, principal=acting.principal, audit=acting.audit)
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
    _out().print(table)


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="user to disable")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Disable a user: its password and API tokens stop working."""
    with _acting(database_url, token, user) as acting:
        disable_user(acting.engine, name, principal=acting.principal, audit=acting.audit)
    _out().print(f"Disabled {shown(name)}.")


@users_app.command("enable")
def users_enable(
    name: Annotated[str, typer.Argument(help="user to enable")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Enable a disabled user again."""
    with _acting(database_url, token, user) as acting:
        enable_user(acting.engine, name, principal=acting.principal, audit=acting.audit)
    _out().print(f"Enabled {shown(name)}.")


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
    with _acting(database_url, token, user) as acting:
        password = _new_password(name, password_stdin, no_password=False) or ""
        set_password(acting.engine, name, password, principal=acting.principal, audit=acting.audit)
        own = acting.principal.username == name
    note = "" if own else " If the account is privileged it now waits for a second admin."
    _out().print(f"Set the password of {shown(name)}.{note}")


@users_app.command("approve")
def users_approve(
    name: Annotated[str, typer.Argument(help="user whose pending account or change to approve")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Approve, as a second admin, a privileged account, role or password another admin gave."""
    with _acting(database_url, token, user) as acting:
        approved = approve_user(acting.engine, name, principal=acting.principal, audit=acting.audit)
    _out().print(f"Approved {shown(approved.username)} ({approved.role.value}).")


@users_app.command("role")
def users_role(
    name: Annotated[str, typer.Argument(help="user whose role to change")],
    role: Annotated[Role, typer.Option("--role", help="the new role")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Give a user another role; a privileged role waits for a second admin's approval."""
    with _acting(database_url, token, user) as acting:
        changed = set_role(
            acting.engine, name, role, principal=acting.principal, audit=acting.audit
        )
    _out().print(
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
    with _acting(database_url, token, user) as acting:
        issued = create_api_token(
            acting.engine,
            name,
            name=label,
            expires_at=expires_at,
            principal=acting.principal,
            audit=acting.audit,
        )
    # The secret alone goes to standard output, so that it can be captured by a script.
    print(issued.secret.get_secret_value())
    _err().print(
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
    with _acting(database_url, token, user) as acting:
        approved = approve_api_token(
            acting.engine, token_id, principal=acting.principal, audit=acting.audit
        )
    _out().print(
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
    with _acting(database_url, token, user) as acting:
        tokens = list_api_tokens(
            acting.engine, owner=owner, principal=acting.principal, audit=acting.audit
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
    _out().print(table)


@users_app.command("revoke-token")
def users_revoke_token(
    token_id: Annotated[int, typer.Argument(help="id from `countyfl users tokens`")],
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Revoke an API token for good."""
    with _acting(database_url, token, user) as acting:
        revoked = revoke_api_token(
            acting.engine, token_id, principal=acting.principal, audit=acting.audit
        )
    _out().print(f"Revoked token {revoked.id} ({shown(revoked.name)}) of {shown(revoked.owner)}.")


@users_app.command("whoami")
def users_whoami(
    database_url: DatabaseUrlOption = None, token: TokenOption = None, user: UserOption = None
) -> None:
    """Show who the given token or user acts as."""
    with _acting(database_url, token, user) as acting:
        principal = acting.principal
    _out().print(f"{shown(principal.username)} ({principal.role.value})")


@users_app.command("roles")
def users_roles() -> None:
    """Print the permission matrix: which role may do what (no authentication needed)."""
    table = Table("action", *(role.value for role in Role), "what it allows", title="Permissions")
    for action in Action:
        marks = ("[green]yes[/green]" if action in PERMISSIONS[role] else "-" for role in Role)
        table.add_row(action.value, *marks, ACTION_DESCRIPTIONS[action])
    _out().print(table)
    _out().print(
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
    with _acting(database_url, token, user) as acting:
        versions = list_versions(
            acting.engine, name=name, stage=stage, principal=acting.principal, audit=acting.audit
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
    _out().print(table if versions else "No model versions.")


def _show(version: ModelVersionPublic) -> None:
    out = _out()
    out.print(
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
        out.print(f"  {label:<18} {shown(value)}")

    sites = Table("institution", "epsilon", "delta", "metrics", title="Institutions")
    for item in version.institutions:
        sites.add_row(
            shown(item.institution),
            "no DP" if item.epsilon is None else f"{item.epsilon:.3g}",
            "-" if item.delta is None else f"{item.delta:.2g}",
            shown(_metrics_text(version.metrics.per_institution.get(item.institution, {}))) or "-",
        )
    out.print(sites)
    history = Table("when", "from", "to", "by", "reason", title="Stage history")
    for change in version.history:
        history.add_row(
            _when(change.changed_at),
            "-" if change.from_stage is None else change.from_stage.value,
            change.to_stage.value,
            shown(change.changed_by),
            shown(change.reason),
        )
    out.print(history)


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
    with _acting(database_url, token, user) as acting:
        found = get_version(
            acting.engine, name, version, principal=acting.principal, audit=acting.audit
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
    with _acting(database_url, token, user) as acting:
        version = register_published(
            acting.engine, folder, principal=acting.principal, audit=acting.audit
        )
    _out().print(
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

    with _acting(database_url, token, user) as acting:
        data = read_evaluation_csv(evaluation_data)
        promoted = promote(
            acting.engine,
            name,
            version,
            evaluation=data,
            principal=acting.principal,
            audit=acting.audit,
            reason=reason,
        )
    measured = promoted.evaluation
    _out().print(
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
    with _acting(database_url, token, user) as acting:
        archived = archive(
            acting.engine,
            name,
            version,
            principal=acting.principal,
            audit=acting.audit,
            reason=reason,
        )
    _out().print(f"{shown(archived.name)} v{archived.version} is archived.")


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
    with _acting(database_url, token, user) as acting:
        threshold = set_threshold(
            acting.engine, name, metric, minimum, principal=acting.principal, audit=acting.audit
        )
    _out().print(
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
    with _acting(database_url, token, user) as acting:
        thresholds = list_thresholds(
            acting.engine, model_name=name, principal=acting.principal, audit=acting.audit
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
    _out().print(table if thresholds else "No thresholds set.")
