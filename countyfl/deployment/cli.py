"""The ``countyfl certs``, ``countyfl node`` and ``countyfl task`` commands (typer sub-apps).

Exit codes
----------
0  done (``node check``: the site can run)
2  bad input or configuration: the message names the file and field
3  refused: a task is not approved (``node check --task``), the approver declined, or the
   task is already approved
"""

from __future__ import annotations

import getpass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from countyfl.deployment.certs import (
    DEFAULT_HOSTS,
    DEFAULT_SERVER_DAYS,
    add_node,
    init_certificates,
)
from countyfl.deployment.check import Status, check_site
from countyfl.deployment.tasks import (
    TaskAlreadyApprovedError,
    TaskManifest,
    approve_task,
    manifest_for,
    manifest_hash,
    read_task_file,
    run_config_from_overrides,
    task_name,
    write_task_file,
)
from countyfl.errors import CountyflError


class ExitCode(IntEnum):
    """Exit status of the deployment commands."""

    OK = 0
    BAD_INPUT = 2
    REFUSED = 3


certs_app = typer.Typer(
    help="TLS certificates of the county SuperLink and SuperNode authentication keys.",
    no_args_is_help=True,
    add_completion=False,
)
node_app = typer.Typer(
    help="An institution's node: check its site.toml and data, approve tasks.",
    no_args_is_help=True,
    add_completion=False,
)
task_app = typer.Typer(
    help="Task manifests: what a federated run asks of the sites.",
    no_args_is_help=True,
    add_completion=False,
)


def _out() -> Console:
    return Console()


def _fail(error: Exception | str, code: ExitCode = ExitCode.BAD_INPUT) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {escape(str(error))}")
    raise typer.Exit(code=int(code))


def _value_column() -> Column:
    # Fingerprints and paths must be shown whole, never cut with an ellipsis.
    return Column("value", overflow="fold")


SiteOption = Annotated[Path, typer.Option("--site", help="the institution's site.toml")]


@certs_app.command("init")
def certs_init(
    out: Annotated[Path, typer.Option("--out", help="folder for CA, server cert and keys")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="a name or IP address SuperNodes use to reach the SuperLink (repeatable) "
            f"[default: {', '.join(DEFAULT_HOSTS)}]",
            show_default=False,
        ),
    ] = None,
    days: Annotated[
        int, typer.Option(help="validity of the server certificate in days")
    ] = DEFAULT_SERVER_DAYS,
) -> None:
    """Create the county CA and the SuperLink's TLS certificate (never overwrites)."""
    try:
        result = init_certificates(out, hosts=tuple(host or DEFAULT_HOSTS), days=days)
    except CountyflError as error:
        _fail(error)
    table = Table("item", _value_column(), title=f"TLS certificates in {out}")
    table.add_row("CA certificate", str(result.ca_certificate))
    table.add_row("CA private key (keep offline)", str(result.ca_private_key))
    table.add_row("server certificate", str(result.server_certificate))
    table.add_row("server private key", str(result.server_private_key))
    table.add_row("hosts (SubjectAltNames)", ", ".join(result.hosts))
    table.add_row("server certificate valid until", result.not_after.isoformat())
    table.add_row("CA sha256", result.ca_fingerprint)
    table.add_row("server sha256", result.server_fingerprint)
    console = _out()
    console.print(table)
    console.print(
        "SuperLink: --ssl-ca-certfile "
        f"{result.ca_certificate} --ssl-certfile {result.server_certificate} "
        f"--ssl-keyfile {result.server_private_key}\n"
        f"Every institution gets {result.ca_certificate} (site.toml keys.root_certificate)."
    )


@certs_app.command("add-node")
def certs_add_node(
    name: Annotated[str, typer.Argument(help="the node's name: the institution id")],
    directory: Annotated[Path, typer.Option("--dir", help="the certificate folder")],
) -> None:
    """Create an institution's SuperNode authentication key pair (ECDSA P-384, OpenSSH)."""
    try:
        keys = add_node(directory, name)
    except CountyflError as error:
        _fail(error)
    table = Table("item", _value_column(), title=f"SuperNode keys of {name}")
    table.add_row("private key (for the institution only)", str(keys.private_key))
    table.add_row("public key", str(keys.public_key))
    table.add_row("fingerprint", keys.fingerprint)
    console = _out()
    console.print(table)
    console.print(
        f"Register it at the SuperLink: flwr supernode register {keys.public_key}\n"
        f"Give {keys.private_key} to {name} over a secure channel (site.toml "
        "keys.node_private_key; the SuperNode's --auth-supernode-private-key)."
    )


def _manifest_table(manifest: TaskManifest, title: str) -> Table:
    table = Table("item", _value_column(), title=title, show_lines=False)
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


@task_app.command("manifest")
def task_manifest(
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            help="overrides as for `flwr run --run-config`, e.g. 'num-server-rounds=5 "
            "encryption=\"ckks\"' (repeatable); defaults are the scenario's",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write the manifest here")] = None,
) -> None:
    """Derive a run's task manifest (what a site approves) and print its hash."""
    from flwr.common.config import parse_config_args

    try:
        overrides = parse_config_args(run_config)
        config = run_config_from_overrides(overrides)
    except click.ClickException as error:
        _fail(f"--run-config: {error.format_message()}")
    except (CountyflError, ValueError, OSError) as error:
        _fail(error)
    manifest = manifest_for(config)
    console = _out()
    console.print(_manifest_table(manifest, "task manifest"))
    if out is not None:
        write_task_file(manifest, out)
        console.print(f"written to {out}")
    console.print(manifest_hash(manifest))


@node_app.command("check")
def node_check(
    site: SiteOption,
    task: Annotated[
        Path | None, typer.Option("--task", help="also say whether this task.json is approved")
    ] = None,
) -> None:
    """Validate the site's configuration, data, budget and keys, without training."""
    try:
        manifest = read_task_file(task) if task is not None else None
        check = check_site(site, task=manifest)
    except CountyflError as error:
        _fail(error)
    colours = {Status.OK: "green", Status.WARNING: "yellow", Status.PROBLEM: "red"}
    table = Table("section", "check", _value_column(), "status", title=f"node check: {site}")
    section = ""
    for finding in check.findings:
        colour = colours[finding.status]
        table.add_row(
            finding.section if finding.section != section else "",
            escape(finding.item),
            escape(finding.value),
            f"[{colour}]{finding.status.value}[/{colour}]",
        )
        section = finding.section
    console = _out()
    console.print(table)
    if check.problems:
        _fail(f"{len(check.problems)} problem(s) in {site}; see the table above")
    if check.task_approved is False:
        _fail(
            f"the task in {task} is not approved at {check.site.institution_id}; "
            f"approve it with `countyfl node approve --site {site} --task {task}`",
            ExitCode.REFUSED,
        )
    console.print(f"[green]{escape(str(site))} is ready[/green]")


@node_app.command("approve")
def node_approve(
    site: SiteOption,
    task: Annotated[Path, typer.Option("--task", help="task.json from `countyfl task manifest`")],
    by: Annotated[
        str | None,
        typer.Option("--by", help="who approves [default: your login name]", show_default=False),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="approve without asking")] = False,
) -> None:
    """Show a task manifest and append its approval to site.toml."""
    try:
        manifest = read_task_file(task)
    except CountyflError as error:
        _fail(error)
    console = _out()
    console.print(_manifest_table(manifest, f"task to approve for {site}"))
    approver = by
    if approver is None:
        try:
            approver = getpass.getuser()
        except (KeyError, OSError):
            _fail("cannot tell who you are; pass --by NAME")
    if not yes and not typer.confirm(f"Approve this task for {site} as {approver}?"):
        _fail("not approved; nothing was written", ExitCode.REFUSED)
    try:
        approved = approve_task(site, manifest, approved_by=approver)
    except TaskAlreadyApprovedError as error:
        _fail(error, ExitCode.REFUSED)
    except CountyflError as error:
        _fail(error)
    console.print(
        f"approved {approved.sha256} ({escape(approved.name)}) by {escape(approved.approved_by)} "
        f"at {approved.approved_at.isoformat()}; appended to {site}"
    )
