"""The ``countyfl`` command: one module per command group, each imported only when invoked.

``countyfl --help`` lists every group from the table below without importing any of them,
so it (and every command that does not train) answers at once; a group's module, and the
libraries it needs, are imported when that group is run. Every command shares the exit
codes, options and error printer of :mod:`countyfl.cli.common`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import click
import typer
from typer.core import TyperGroup

import countyfl  # noqa: F401  (switches Flower's telemetry off before flwr is imported)

# name -> (module, Typer app attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": (
        "countyfl.cli.simulation",
        "simulate_app",
        "Run a federated simulation on real hospital data and write a report folder.",
    ),
    "scenarios": (
        "countyfl.cli.simulation",
        "scenarios_app",
        "List the scenarios a simulation can run.",
    ),
    "model": ("countyfl.cli.model", "model_app", "Publish trained models."),
    "keys": ("countyfl.cli.keys", "keys_app", "CKKS key material for encrypted aggregation."),
    "certs": (
        "countyfl.cli.deployment",
        "certs_app",
        "TLS certificates of the county SuperLink and SuperNode authentication keys.",
    ),
    "server": (
        "countyfl.cli.deployment",
        "server_app",
        "The county node: Flower SuperLink with TLS and SuperNode authentication.",
    ),
    "node": (
        "countyfl.cli.deployment",
        "node_app",
        "An institution's node: check its site.toml and data, approve tasks, start it.",
    ),
    "task": (
        "countyfl.cli.tasks",
        "task_app",
        "Task files (init, validate, show) and run manifests: what a run asks of the sites.",
    ),
    "run": (
        "countyfl.cli.deployment",
        "run_app",
        "Submit a federation to the county's SuperLink and follow its nodes, rounds and "
        "replies (with a deadline).",
    ),
    "users": (
        "countyfl.cli.registry",
        "users_app",
        "Users, roles and API tokens of the registry and the API.",
    ),
    "registry": (
        "countyfl.cli.registry",
        "registry_app",
        "Model versions: lineage, promotion thresholds, promotion and archival.",
    ),
    "audit": (
        "countyfl.cli.audit",
        "audit_app",
        "The append-only, hash-chained audit log: verify it, export it, sign checkpoints.",
    ),
    "serve": (
        "countyfl.cli.serving",
        "serve_app",
        "Serve predictions and referral advice over HTTP (OpenAPI docs at /docs).",
    ),
}


def load_command(name: str) -> click.Command:
    """The click command of group ``name``, importing its module now."""
    module, attribute, _ = COMMANDS[name]
    command = typer.main.get_command(getattr(import_module(module), attribute))
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A group whose subcommands are imported only when one of them is run.

    Listing (``--help``) uses stand-ins carrying the help line of :data:`COMMANDS`;
    resolving a command for a run replaces the stand-in with the real one.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            help_line = COMMANDS[cmd_name][2]
            return click.Command(cmd_name, help=help_line, short_help=help_line)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name in COMMANDS:
            command = load_command(name)
        return name, command, rest


app = typer.Typer(
    cls=LazyGroup,
    help="countyfl: privacy-preserving federated learning for a county medical community.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """countyfl: privacy-preserving federated learning for a county medical community."""


def main(*args: Any) -> None:
    """Console-script entry point."""
    app()
