"""The ``countyfl task`` commands: task files (init, validate, show) and run manifests.

``init``, ``validate`` and ``show`` read TOML and pydantic only (pint for units): none of
them imports torch, Opacus, TenSEAL or Flower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from countyfl.cli.common import ExitCode, fail, manifest_table, stdout
from countyfl.errors import CountyflError

task_app = typer.Typer(
    help="Task files (what a county's model predicts, from what) and run manifests.",
    no_args_is_help=True,
    add_completion=False,
)

TaskFileArgument = Annotated[Path, typer.Argument(help="the task file (TOML)")]


@task_app.command("init")
def task_init(
    path: Annotated[Path, typer.Argument(help="where to write the template")] = Path("task.toml"),
    force: Annotated[bool, typer.Option(help="replace an existing file")] = False,
) -> None:
    """Write a commented task-file template to edit."""
    from countyfl.clinical.task import TEMPLATE

    if path.exists() and not force:
        fail(f"{path} already exists; choose another path or pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TEMPLATE, encoding="utf-8")
    except OSError as error:
        fail(f"{path}: cannot be written ({error})")
    stdout().print(
        f"wrote {path}: edit it, then run `countyfl task validate {path}` and "
        f"`countyfl task show {path}`"
    )


def _load(path: Path):  # type: ignore[no-untyped-def]
    from countyfl.clinical.mapping import check_units
    from countyfl.clinical.task import load_task

    try:
        task = load_task(path)
        check_units(task, where=str(path))
    except CountyflError as error:
        fail(error, ExitCode.USAGE)
    return task


@task_app.command("validate")
def task_validate(path: TaskFileArgument) -> None:
    """Check a task file; errors name the file, the key and the fix (exit 2)."""
    task = _load(path)
    stdout().print(
        f"{path}: task {task.name!r} is valid: {len(task.features)} features, "
        f"{len(task.feature_names)} model inputs, label {task.label.column!r}, registered "
        f"as {task.registry_name!r}"
    )


@task_app.command("show")
def task_show(path: TaskFileArgument) -> None:
    """Show a task: label, features with units and ranges, model, privacy defaults."""
    from countyfl.clinical.task import FeatureType

    task = _load(path)
    console = stdout()
    summary = Table("item", Column("value", overflow="fold"), title=f"task {task.name}")
    summary.add_row("description", escape(task.description))
    summary.add_row("intended use", escape(task.intended_use))
    summary.add_row("registry name", task.registry_name)
    summary.add_row(
        "label",
        f"{escape(task.label.column)}: positive {list(task.label.positive)}, "
        f"negative {list(task.label.negative)}",
    )
    summary.add_row("scaling", task.preprocessing.scaling)
    model = task.model
    summary.add_row(
        "model",
        f"{model.name}, {model.rounds} rounds, {model.local_steps} local steps, batch "
        f"{model.batch_size}, {model.optimizer} lr {model.learning_rate} momentum {model.momentum}",
    )
    privacy = task.privacy
    summary.add_row(
        "privacy",
        (
            f"DP epsilon {privacy.target_epsilon} per run, delta {privacy.delta}, clipping "
            f"{privacy.max_grad_norm}"
            if privacy.dp
            else "[bold red]DP off[/bold red]"
        )
        + f"; encryption {privacy.encryption}",
    )
    summary.add_row("model inputs", str(len(task.feature_names)))
    console.print(summary)
    features = Table(
        Column("feature", no_wrap=True),
        "type",
        "unit",
        "range / categories",
        "missing",
        "centre, scale",
        title="features",
    )
    for feature in task.features:
        if feature.type is FeatureType.CATEGORY:
            values = ", ".join(feature.categories) + " (first: reference)"
        elif feature.range is not None:
            values = f"{feature.range[0]:g} .. {feature.range[1]:g}"
        else:
            values = "yes / no"
        missing = feature.missing.value
        if feature.fill is not None:
            missing += f" {feature.fill:g}"
            if feature.fill_zero_when_no:
                missing += f" (0 when {feature.fill_zero_when_no} is no)"
        features.add_row(
            feature.name,
            feature.type.value,
            escape(feature.unit or ""),
            escape(values),
            missing,
            f"{feature.reference.centre:g}, {feature.reference.scale:g}",
        )
    console.print(features)


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
    import click
    from flwr.common.config import parse_config_args

    from countyfl.deployment.tasks import (
        manifest_for,
        manifest_hash,
        run_config_from_overrides,
        write_task_file,
    )

    try:
        overrides = parse_config_args(run_config)
        if overrides.get("encryption") == "ckks":
            # Where the county keeps its public context is not part of the task a site
            # approves (EXCLUDED_RUN_CONFIG_FIELDS): the manifest needs no path for it.
            overrides.setdefault("he-public-context", "(not part of the manifest)")
        config = run_config_from_overrides(overrides)
    except click.ClickException as error:
        fail(f"--run-config: {error.format_message()}")
    except (CountyflError, ValueError, OSError) as error:
        fail(error)
    manifest = manifest_for(config)
    console = stdout()
    console.print(manifest_table(manifest, "task manifest"))
    if out is not None:
        write_task_file(manifest, out)
        console.print(f"written to {out}")
    console.print(manifest_hash(manifest))
