"""The ``countyfl audit`` commands: verify, export, checkpoint, export-checkpoints, keygen.

Exit codes (:class:`countyfl.cli.common.ExitCode`): 0 when the command did its work
(``verify``: the log is intact), 1 when the audit log was found tampered with, 2 for
usage errors and unusable inputs (a missing key file, an unreadable database or
checkpoint file), 3 when the caller is not logged in or its role may not do this
(``verify`` needs audit.verify; ``export`` and ``export-checkpoints`` need audit.export;
log in with --token / COUNTYFL_TOKEN or --user).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TextIO

import typer

from countyfl.audit.errors import AuditTamperedError
from countyfl.audit.operations import (
    checkpoint_audit_log,
    export_audit_checkpoints,
    export_audit_entries,
    verify_audit_log,
)
from countyfl.audit.signing_keys import default_signing_key_path, generate_signing_key
from countyfl.cli.common import (
    DatabaseUrlOption,
    ExitCode,
    TokenOption,
    UserOption,
    require_permission,
    stderr,
    stdout,
)
from countyfl.errors import CountyflError
from countyfl.terminal import shown

audit_app = typer.Typer(
    help="The append-only, hash-chained audit log: verify it, export it, sign checkpoints.",
    no_args_is_help=True,
    add_completion=False,
)

SigningKey = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        help="Ed25519 private key file [default: COUNTYFL_HOME/keys/audit-signing.key]",
        show_default=False,
    ),
]


def _require(database_url: str | None, token: str | None, user: str | None, action: str) -> None:
    # Roles live in the registry's one permission table; imported here so that the audit
    # library itself never depends on the registry.
    from countyfl.registry.permissions import Action

    require_permission(database_url, token, user, Action(action), target="audit-log")


def _usage_error(error: CountyflError) -> typer.Exit:
    stderr().print(f"[red]error:[/red] {shown(error)}")
    return typer.Exit(code=ExitCode.USAGE)


def _parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time; use e.g. 2026-11-28 or 2026-11-28T09:00:00Z",
            param_hint="--since",
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@audit_app.command("verify")
def verify_command(
    database_url: DatabaseUrlOption = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--public-key",
            help="public key (.pub) of a checkpoint signing key; repeat for rotated keys. "
            "Without one, only the hash chain is checked.",
            show_default=False,
        ),
    ] = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints",
            help="a site's JSON-lines copy of the checkpoints (needs --public-key): the "
            "strongest check, kept by another party",
            show_default=False,
        ),
    ] = None,
    known_checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--known-checkpoints",
            help="this verifier's own copy of the checkpoints it trusted before, updated "
            "after each passing verification [default: COUNTYFL_HOME/audit/verified-*.jsonl]",
            show_default=False,
        ),
    ] = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Verify the hash chain and, with --public-key, the signed checkpoints.

    Fails on an empty log, on a log no signed checkpoint vouches for (with --public-key), and
    on a log shorter than the latest checkpoint known from the database, a site's copy
    (--checkpoints) or this verifier's own earlier runs; it says what it compared against.
    Exits 0 when the log is intact, 1 when it was tampered with (naming the first bad
    entry), 2 when it could not be checked, 3 when the caller may not verify it.
    """
    _require(database_url, token, user, "audit.verify")
    try:
        result = verify_audit_log(
            database_url,
            public_key_paths=public_key or (),
            checkpoints_path=checkpoints,
            known_path=known_checkpoints,
        )
    except CountyflError as error:
        raise _usage_error(error) from None
    console = stdout()
    if not result.ok:
        console.print(f"[bold red]{shown(result.summary())}[/bold red]")
        for problem in sorted(result.problems, key=lambda problem: problem.seq):
            console.print(f"[red]  - {problem.kind.value}: {shown(problem.message)}[/red]")
        raise typer.Exit(code=ExitCode.REFUSED)
    style = "green" if result.signatures_checked and result.checkpoints_verified else "yellow"
    console.print(f"[{style}]{shown(result.summary())}[/{style}]")


@audit_app.command("export")
def export_command(
    out: Annotated[
        str, typer.Option("--out", help="JSON-lines file to write, '-' for standard output")
    ] = "-",
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="only entries recorded at or after this ISO 8601 time (UTC if no zone)",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Export entries as JSON lines, one object per entry with every stored field."""
    moment = _parse_since(since)
    _require(database_url, token, user, "audit.export")
    count = _write_json_lines(out, lambda file: export_audit_entries(database_url, moment, file))
    where = "standard output" if out == "-" else out
    stderr().print(f"exported {count} entr{'y' if count == 1 else 'ies'} to {shown(where)}")


@audit_app.command("export-checkpoints")
def export_checkpoints_command(
    out: Annotated[
        str, typer.Option("--out", help="JSON-lines file to write, '-' for standard output")
    ] = "-",
    database_url: DatabaseUrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Export the signed checkpoints as JSON lines, for sites to keep a copy."""
    _require(database_url, token, user, "audit.export")
    count = _write_json_lines(out, lambda file: export_audit_checkpoints(database_url, file))
    where = "standard output" if out == "-" else out
    stderr().print(f"exported {count} checkpoint{'' if count == 1 else 's'} to {shown(where)}")


def _write_json_lines(out: str, export: Callable[[TextIO], int]) -> int:
    """Run ``export`` on standard output ('-') or on the file ``out``; exit 2 on failure."""
    try:
        if out == "-":
            return export(sys.stdout)
        with open(out, "w", encoding="utf-8", newline="\n") as file:
            return export(file)
    except OSError as error:
        stderr().print(f"[red]error:[/red] {shown(out)} cannot be written: {error.strerror}")
        raise typer.Exit(code=ExitCode.USAGE) from None
    except CountyflError as error:
        raise _usage_error(error) from None


@audit_app.command("checkpoint")
def checkpoint_command(
    signing_key: SigningKey = None, database_url: DatabaseUrlOption = None
) -> None:
    """Sign the chain's current head and store the checkpoint.

    The entries since the last checkpoint are verified first; a broken chain is not signed
    (exit 1).
    """
    path = signing_key or default_signing_key_path()
    try:
        checkpoint = checkpoint_audit_log(database_url, path)
    except AuditTamperedError as error:
        stderr().print(f"[bold red]{shown(error)}[/bold red]")
        raise typer.Exit(code=ExitCode.REFUSED) from None
    except CountyflError as error:
        raise _usage_error(error) from None
    stdout().print(
        f"[green]signed checkpoint of entry {checkpoint.seq}[/green] (hash "
        f"{checkpoint.entry_hash}, key {checkpoint.key_id}, at {checkpoint.signed_at}). Sites "
        "should keep a copy: countyfl audit export-checkpoints --out FILE"
    )


@audit_app.command("keygen")
def keygen_command(
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="private key file to create; the public key goes to OUT.pub "
            "[default: COUNTYFL_HOME/keys/audit-signing.key]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an Ed25519 checkpoint signing key (mode 0600) and its public key (OUT.pub)."""
    try:
        private_path, public_path, key_id = generate_signing_key(
            key_file or default_signing_key_path()
        )
    except CountyflError as error:
        raise _usage_error(error) from None
    stdout().print(
        f"[green]created signing key {shown(private_path)}[/green] (key {key_id}) and its "
        f"public key {shown(public_path)}. Keep the private key off the database host and "
        "out of its backups; give the .pub file to whoever verifies."
    )
