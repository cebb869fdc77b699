"""What every ``countyfl`` command shares: exit codes, options, the error printer, logging in.

Exit codes (every command)
--------------------------
0  done (``node check``: the site can run; ``audit verify``: the log is intact)
1  refused or failed: a rule said no (a promotion gate, the two-person rule, a site that
   has not approved a task or already approved it, a budget), a check failed (a tampered
   audit log, an artifact whose sha256 does not match), or a run did not complete
2  bad usage or input: an unknown option or value, a missing or malformed file; the
   message names the file and field
3  not authenticated, or the role lacks the permission (``countyfl users roles``)
4  not found: no such user, token or model version

Nothing here imports more than typer and rich at module level: ``countyfl --help`` and
every command that does not train answer at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from countyfl.errors import ConfigError, CountyflError
from countyfl.terminal import shown

if TYPE_CHECKING:
    from rich.table import Column, Table
    from sqlalchemy import Engine

    from countyfl.deployment.tasks import TaskManifest
    from countyfl.registry.audit_sink import AuditSink
    from countyfl.registry.permissions import Action
    from countyfl.registry.roles import Principal


class ExitCode(IntEnum):
    """Exit status of every countyfl command (see the module docstring)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    NOT_ALLOWED = 3
    NOT_FOUND = 4


DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL of the registry and audit log [default: COUNTYFL_DATABASE_URL, "
        "else SQLite under COUNTYFL_HOME]",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="COUNTYFL_TOKEN", help="API token to act with", show_default=False
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", help="act as this user; asks for its password", show_default=False),
]
StateOption = Annotated[
    Path,
    typer.Option(
        "--state-dir", help="the county node's state: SuperLink database, flwr connection"
    ),
]


def stdout() -> Console:
    """Standard output, without rich's guesses at highlighting."""
    return Console(soft_wrap=True, highlight=False)


def stderr() -> Console:
    """Standard error."""
    return Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: object, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    """Print ``error: message`` (control characters and markup escaped) and exit ``code``."""
    stderr().print(f"[red]error:[/red] {shown(message)}")
    raise typer.Exit(code=int(code))


def exit_code_of(error: CountyflError) -> ExitCode:
    """The exit code a countyfl error ends a command with."""
    from countyfl.registry.errors import (
        AlreadyExistsError,
        AuthenticationError,
        BootstrapError,
        InvalidInputError,
        NotFoundError,
        PermissionDeniedError,
    )

    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return ExitCode.NOT_ALLOWED
    if isinstance(error, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(error, InvalidInputError | AlreadyExistsError | BootstrapError | ConfigError):
        return ExitCode.USAGE
    return ExitCode.REFUSED


@contextmanager
def exit_codes() -> Iterator[None]:
    """Turn countyfl's errors (and database failures) into a message and an exit code."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except CountyflError as error:
        fail(str(error), exit_code_of(error))
    except SQLAlchemyError as error:
        # The engine hides statement parameters, so this never prints a row's values.
        fail(f"the database failed: {error}", ExitCode.REFUSED)


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` value as TOML reads it (numbers, booleans, quoted strings), else text."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``--config KEY=VALUE`` options as a run-config mapping; exits 2 on a malformed one."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, separator, value = item.partition("=")
        if not separator:
            fail(f"--config {item!r} is not KEY=VALUE")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def parse_seeds(text: str | None) -> list[int]:
    """``42,43`` or ``42-46`` as a list of seeds (BadParameter names what is wrong)."""
    if not text:
        return []
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        elif match := re.fullmatch(r"(\d+)-(\d+)", part):
            low, high = int(match[1]), int(match[2])
            if low > high:
                raise typer.BadParameter(f"range {part!r} is empty", param_hint="--seeds")
            seeds.extend(range(low, high + 1))
        else:
            raise typer.BadParameter(
                f"{part!r} is not a seed; give integers like 42,43 or a range 42-46",
                param_hint="--seeds",
            )
    return seeds


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_flower(verbose: bool) -> None:
    """Only Flower's and Ray's errors come through, unless ``verbose``.

    Flower logs every round at INFO; the runner reports failures itself. Flower resets its
    logger's level, so a filter on the logger does it.
    """
    level = logging.INFO if verbose else logging.ERROR
    for name in ("flwr", "ray"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not verbose and not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())


# -- acting as a registry user ---------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """An open database with its audit log."""

    engine: Engine
    audit: AuditSink


@dataclass(frozen=True)
class Acting:
    """An open database, its audit log, and who is acting."""

    engine: Engine
    audit: AuditSink
    principal: Principal


def open_audit_sink(engine: Engine) -> AuditSink:
    """The audit log of ``engine``'s database."""
    from countyfl.audit import AuditLog

    return AuditLog(engine)


def connect(database_url: str | None) -> Session:
    """The registry's database (migrated) and its audit log."""
    from countyfl.settings import Settings
    from countyfl.storage import open_database

    engine = open_database(database_url or Settings().resolved_database_url())
    return Session(engine, open_audit_sink(engine))


def login(session: Session, token: str | None, user: str | None) -> Principal:
    """Who acts: ``--user`` (asks for the password) wins over a token; else exit 3."""
    from countyfl.registry.users import authenticate_password, authenticate_token

    if user is not None:
        password = typer.prompt(f"Password of {user}", hide_input=True, err=True)
        return authenticate_password(session.engine, user, password, audit=session.audit)
    if token:
        return authenticate_token(session.engine, token, audit=session.audit)
    fail(
        "not authenticated: give an API token with --token or COUNTYFL_TOKEN, or --user NAME "
        "to be asked for a password",
        ExitCode.NOT_ALLOWED,
    )


@contextmanager
def acting(database_url: str | None, token: str | None, user: str | None) -> Iterator[Acting]:
    """Open the database, log in, and close it afterwards; errors become exit codes."""
    with exit_codes():
        session = connect(database_url)
        try:
            yield Acting(session.engine, session.audit, login(session, token, user))
        finally:
            session.engine.dispose()


def require_permission(
    database_url: str | None, token: str | None, user: str | None, action: Action, target: str
) -> Principal:
    """Log in and check ``action``; exits 3 when not logged in or not allowed (audited).

    The registry's one permission table decides, as for every other command and the API.
    """
    from countyfl.registry.permissions import authorize

    with acting(database_url, token, user) as actor:
        authorize(actor.principal, action, audit=actor.audit, target=target)
        return actor.principal


def value_column() -> Column:
    """A table column shown whole: fingerprints and paths are never cut with an ellipsis."""
    from rich.table import Column

    return Column("value", overflow="fold")


def manifest_table(manifest: TaskManifest, title: str) -> Table:
    """A task manifest as a site reads it before approving (every item, then its hash)."""
    from rich.markup import escape
    from rich.table import Table

    from countyfl.deployment.tasks import manifest_hash, task_name

    table = Table("item", value_column(), title=title, show_lines=False)
    table.add_row("task", escape(task_name(manifest)))
    table.add_row("model", manifest.model)
    table.add_row("scenario / schema", f"{manifest.scenario} / {manifest.data_schema}")
    table.add_row("features", ", ".join(manifest.features))
    table.add_row("strategy", manifest.strategy.value)
    table.add_row("rounds", str(manifest.num_server_rounds))
    table.add_row("local steps per round", str(manifest.local_steps))
    table.add_row("batch size", str(manifest.batch_size))
    table.add_row(
        "optimizer",
        f"{manifest.optimizer.value}, learning rate {manifest.learning_rate}, momentum "
        f"{manifest.momentum}, weight decay {manifest.weight_decay}",
    )
    if manifest.proximal_mu:
        table.add_row("proximal mu", str(manifest.proximal_mu))
    privacy = manifest.differential_privacy
    if privacy is None:
        table.add_row("differential privacy", "[bold red]off[/bold red]")
    else:
        table.add_row(
            "differential privacy",
            f"epsilon {privacy.target_epsilon} per run, delta {privacy.delta}, clipping norm "
            f"{privacy.max_grad_norm}, accountant {privacy.accountant.value}",
        )
    table.add_row("encryption", manifest.encryption.value)
    for number, item in enumerate(manifest.leaves_site, start=1):
        table.add_row("leaves the site" if number == 1 else "", f"{number}. {escape(item)}")
    table.add_row("sha256", manifest_hash(manifest))
    return table
