"""``countyfl model publish``: a key holder turns a finished run into a model artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from countyfl.cli.common import fail, stdout
from countyfl.errors import CountyflError
from countyfl.terminal import shown

model_app = typer.Typer(help="Publish trained models.", no_args_is_help=True, add_completion=False)


@model_app.callback()
def _model() -> None:
    """Publish trained models (a group, so that `model publish` keeps its name)."""


@model_app.command("publish")
def model_publish(
    run_dir: Annotated[
        Path, typer.Argument(help="output folder of a finished run (holds run.json)")
    ],
    secret_context: Annotated[
        Path | None,
        typer.Option(help="institutions' secret CKKS context; needed for an encrypted run"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="where to write (default RUN_DIR/published)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="registry model name (default: the scenario's)")
    ] = None,
) -> None:
    """Decrypt a run's final aggregate (as a key holder) and write the model artifact.

    Writes model.npz and model.json (run, rounds, institutions, per-institution epsilon,
    HE parameters, metrics, sha256): what `countyfl registry register` reads.
    """
    from countyfl.publishing import publish
    from countyfl.registry.published import METADATA_FILE

    try:
        metadata = publish(run_dir, out, secret_context_path=secret_context, name=name)
    except CountyflError as error:
        fail(error)
    folder = out or run_dir / "published"
    table = Table("item", "value", title=f"published {shown(metadata['name'])} to {shown(folder)}")
    table.add_row("run", shown(metadata["run_id"]))
    table.add_row("rounds", str(metadata["rounds"]))
    table.add_row("institutions", shown(", ".join(metadata["institutions"])))
    for institution, spent in metadata["privacy"].items():
        table.add_row(
            f"epsilon at {shown(institution)}", f"{spent['epsilon']} (delta {spent['delta']})"
        )
    for metric, value in metadata["metrics"]["federated"].items():
        table.add_row(f"federated {shown(metric)}", "n/a" if value is None else f"{value:.4f}")
    table.add_row("encryption", "none" if metadata["encryption"] is None else "CKKS")
    table.add_row("sha256", metadata["artifact"]["sha256"])
    stdout().print(table)
    stdout().print(f"metadata: {folder / METADATA_FILE}")
