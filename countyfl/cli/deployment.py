"""The ``countyfl certs``, ``countyfl node`` and ``countyfl run`` commands (typer sub-apps).

Exit codes are every command's (:class:`countyfl.cli.common.ExitCode`): 0 done (``node
check``: the site can run), 1 refused (a task not approved by ``node check --task``, the
approver declined, the task already approved, a run that did not complete), 2 bad input
or configuration (the message names the file and field).
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from countyfl.cli.common import (
    ExitCode,
    StateOption,
    fail,
    manifest_table,
    parse_overrides,
    stderr,
    stdout,
    value_column,
)
from countyfl.deployment.certs import (
    DEFAULT_HOSTS,
    DEFAULT_SERVER_DAYS,
    add_node,
    init_certificates,
)
from countyfl.deployment.check import Status, check_site
from countyfl.deployment.tasks import (
    TaskAlreadyApprovedError,
    approve_task,
    manifest_for,
    manifest_hash,
    read_task_file,
)
from countyfl.errors import CountyflError
from countyfl.terminal import shown

if TYPE_CHECKING:
    from rich.progress import TaskID

    from countyfl.runs import RunEvent

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
        fail(error)
    table = Table("item", value_column(), title=f"TLS certificates in {out}")
    table.add_row("CA certificate", str(result.ca_certificate))
    table.add_row("CA private key (keep offline)", str(result.ca_private_key))
    table.add_row("server certificate", str(result.server_certificate))
    table.add_row("server private key", str(result.server_private_key))
    table.add_row("hosts (SubjectAltNames)", ", ".join(result.hosts))
    table.add_row("server certificate valid until", result.not_after.isoformat())
    table.add_row("CA sha256", result.ca_fingerprint)
    table.add_row("server sha256", result.server_fingerprint)
    console = stdout()
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
        fail(error)
    table = Table("item", value_column(), title=f"SuperNode keys of {name}")
    table.add_row("private key (for the institution only)", str(keys.private_key))
    table.add_row("public key", str(keys.public_key))
    table.add_row("fingerprint", keys.fingerprint)
    console = stdout()
    console.print(table)
    console.print(
        f"Register it at the SuperLink: flwr supernode register {keys.public_key}\n"
        f"Give {keys.private_key} to {name} over a secure channel (site.toml "
        "keys.node_private_key; the SuperNode's --auth-supernode-private-key)."
    )


@node_app.command("check")
def node_check(
    site: SiteOption,
    task: Annotated[
        Path | None, typer.Option("--task", help="also say whether this task.json is approved")
    ] = None,
    share: Annotated[
        Path | None,
        typer.Option(
            "--share",
            help="write the data quality as aggregates with small counts suppressed (JSON), "
            "for the site to send to the county if it agrees",
        ),
    ] = None,
) -> None:
    """Validate the site's configuration, data, budget and keys, without training.

    A task-file site's data quality (per feature: missing, out of range, conversions,
    distribution) is shown with exact counts; only ``--share`` writes what may leave the
    site: aggregates, counts under 5 suppressed (docs/site-data.md).
    """
    try:
        manifest = read_task_file(task) if task is not None else None
        check = check_site(site, task=manifest)
    except CountyflError as error:
        fail(error)
    colours = {Status.OK: "green", Status.WARNING: "yellow", Status.PROBLEM: "red"}
    table = Table("section", "check", value_column(), "status", title=f"node check: {site}")
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
    console = stdout()
    console.print(table)
    quality = check.data.quality if check.data is not None else None
    if quality is not None:
        from countyfl.clinical.quality import QUALITY_COLUMNS, quality_rows

        rows = Table(
            *QUALITY_COLUMNS,
            title=f"data quality: {quality.rows_read} rows read, {quality.rows_kept} kept "
            "(shares of the rows read; for this site only)",
        )
        for line in quality_rows(quality):
            rows.add_row(*map(escape, line))
        console.print(rows)
    if share is not None:
        if quality is None:
            fail(
                f"--share: no data quality to share from {site} (it needs a [data] table with "
                "a task file, and an export that loads; see the table above)"
            )
        import json

        from countyfl.clinical.quality import shared_quality
        from countyfl.files import write_file

        text = json.dumps(shared_quality(quality), indent=2, ensure_ascii=False) + "\n"
        try:
            write_file(share, text.encode("utf-8"), replace=True)
        except OSError as error:
            fail(f"--share {share}: cannot be written ({error})")
        console.print(
            f"wrote {escape(str(share))}: aggregates only, counts under 5 suppressed; read it "
            "and send it to the county if the site agrees"
        )
    if check.problems:
        fail(f"{len(check.problems)} problem(s) in {site}; see the table above")
    if check.task_approved is False:
        fail(
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
        fail(error)
    console = stdout()
    console.print(manifest_table(manifest, f"task to approve for {site}"))
    approver = by
    if approver is None:
        try:
            approver = getpass.getuser()
        except (KeyError, OSError):
            fail("cannot tell who you are; pass --by NAME")
    if not yes and not typer.confirm(f"Approve this task for {site} as {approver}?"):
        fail("not approved; nothing was written", ExitCode.REFUSED)
    try:
        approved = approve_task(site, manifest, approved_by=approver)
    except TaskAlreadyApprovedError as error:
        fail(error, ExitCode.REFUSED)
    except CountyflError as error:
        fail(error)
    console.print(
        f"approved {approved.sha256} ({escape(approved.name)}) by {escape(approved.approved_by)} "
        f"at {approved.approved_at.isoformat()}; appended to {site}"
    )


# -- the county node: SuperLink, run submission; an institution's SuperNode ------------

server_app = typer.Typer(
    help="The county node: Flower SuperLink with TLS and SuperNode authentication.",
    no_args_is_help=True,
    add_completion=False,
)


CertsOption = Annotated[
    Path, typer.Option("--certs", help="folder written by `countyfl certs init`")
]


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
        fail(f"{certs} lacks {', '.join(missing)}: run `countyfl certs init --out {certs}`")
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
    stderr().print(f"SuperLink on https://{host}:{port}; `flwr` connection in {connection}")
    os.execvpe(command[0], command, flower_environment())


@server_app.command("add-node")
def server_add_node(
    public_key: Annotated[Path, typer.Argument(help="a site's node public key (.pub)")],
    state_dir: StateOption,
) -> None:
    """Register a site's SuperNode key: only registered nodes may connect."""
    from countyfl.deployment.processes import register_node

    if not public_key.is_file():
        fail(f"{public_key} does not exist (made by `countyfl certs add-node NAME`)")
    try:
        node_id = register_node(state_dir, public_key)
    except CountyflError as error:
        fail(error)
    stdout().print(f"registered {public_key.name} as node {node_id}")


@node_app.command("start")
def node_start(
    site: Annotated[Path, typer.Option("--site", help="the institution's site.toml")],
    superlink: Annotated[str, typer.Option(help="HOST:PORT of the county's SuperLink")],
    port: Annotated[int, typer.Option(help="this node's local runtime API port")] = 9094,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm/--cold",
            help="answer messages from this node's warm processes (default), or start a "
            "fresh Flower process per message (slower; for comparison)",
        ),
    ] = True,
    relay: Annotated[
        bool,
        typer.Option(
            "--relay/--direct",
            help="reach the SuperLink through this node's relay, which takes a round's "
            "next message as soon as it is queued (default), or directly (Flower's own "
            "polling: up to 3 s later)",
        ),
    ] = True,
) -> None:
    """Run this institution's node in the foreground (TLS, its auth key, its site.toml).

    The SuperNode, and countyfl's SuperExec that answers its messages from a pre-imported
    template process, run until either ends or the command is stopped. The SuperNode
    reaches the county through the node's relay (countyfl.deployment.relay), which holds
    the TLS connection and checks the county's root certificate.
    """
    import os

    from countyfl.deployment.processes import (
        flower_environment,
        superexec_command,
        supernode_command,
        supervise,
    )
    from countyfl.deployment.site import load_site
    from countyfl.privacy.he.cache import clear

    try:
        config = load_site(site)
    except CountyflError as error:
        fail(error)
    if config.keys.root_certificate is None or config.keys.node_private_key is None:
        fail(
            f"{site}: keys.root_certificate and keys.node_private_key are needed to join a "
            "county over TLS with node authentication"
        )
    root_certificate = Path(config.keys.root_certificate)
    private_key = Path(config.keys.node_private_key)
    stderr().print(f"{config.name} ({config.institution_id}) joins {superlink}")
    if not warm:
        command = supernode_command(
            site,
            root_certificate=root_certificate,
            private_key=private_key,
            superlink=superlink,
            port=port,
            warm=False,
        )
        os.execvpe(command[0], command, flower_environment())
    fleet_relay = None
    if relay:
        from countyfl.deployment.relay import FleetRelay

        try:
            fleet_relay = FleetRelay(superlink, root_certificate).start()
        except (OSError, ValueError) as error:
            fail(f"the node's relay to {superlink} cannot start: {error}")
    command = supernode_command(
        site,
        root_certificate=fleet_relay.certificate if fleet_relay is not None else root_certificate,
        private_key=private_key,
        superlink=fleet_relay.address if fleet_relay is not None else superlink,
        port=port,
        warm=True,
    )
    # Decrypted aggregates of runs this node saw before are of no use now: start clean,
    # and leave nothing when the node stops.
    clear(Path(config.state_dir))
    try:
        code = supervise(
            [command, superexec_command(site, port=port, parent_pid=os.getpid())],
            flower_environment(),
        )
    finally:
        clear(Path(config.state_dir))
        if fleet_relay is not None:
            fleet_relay.close()
    raise typer.Exit(code=code)


run_app = typer.Typer(add_completion=False)


class RunDisplay:
    """Shows a run's events (:class:`countyfl.runs.RunEvent`) as they arrive.

    One line per event that matters (nodes connected against the minimum, a round's phase
    starting, each reply used or rejected and why, a round's end); on a terminal a live
    bar also counts connected nodes while waiting and each phase's replies, where plain
    output (a log file, a pipe) gets a line per arriving reply instead.
    """

    QUIET_SECONDS = 60.0
    """How long a running run may show no event before the display says where it looks."""

    def __init__(
        self,
        console: Console,
        events: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.live,
        )
        self.events = events
        self._clock = clock
        self._status = ""
        self._running_since: float | None = None
        self._seen_event = False
        self._bar: TaskID | None = None
        self._replies: dict[tuple[int | None, str | None], int] = {}
        self._asked: dict[tuple[int | None, str | None], int] = {}

    def __enter__(self) -> RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def _say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def _set_bar(self, description: str, completed: int, total: int) -> None:
        if self._bar is None:
            self._bar = self.progress.add_task(description, total=total)
        self.progress.update(self._bar, description=description, completed=completed, total=total)

    @staticmethod
    def _who(event: RunEvent) -> str:
        return shown(event.institution) if event.institution else f"node {event.node}"

    def status(self, run_id: str, status: str) -> None:
        """The run's status at the SuperLink (asked every few seconds)."""
        if status != self._status and not status.startswith("finished"):
            self._status = status
            self._say(f"run {shown(run_id)}: {shown(status)}")
        if status != "running" or self._seen_event:
            return
        now = self._clock()
        if self._running_since is None:
            self._running_since = now
        elif now - self._running_since >= self.QUIET_SECONDS:
            self._seen_event = True  # say it once
            self._say(
                f"[yellow]no event from the ServerApp after {self.QUIET_SECONDS:.0f} s of "
                f"running[/yellow]: it appends them to {shown(self.events)} on the machine "
                "that runs the SuperLink; run `countyfl run` there to follow the run "
                "(it still ends with the run's status)"
            )

    def __call__(self, event: RunEvent) -> None:
        from countyfl.runs import EventKind

        self._seen_event = True
        where = f"round {event.round}/{event.rounds} {event.phase}"
        key = (event.round, event.phase)
        if event.kind is EventKind.NODES:
            connected, needed = event.connected or 0, event.needed or 0
            state = ""
            if connected < needed:
                limit = event.wait_seconds
                state = ", waiting" + (f" up to {limit:.0f} s" if limit is not None else "")
            self._say(f"nodes: {connected} of {needed} connected (min-nodes {needed}){state}")
            self._set_bar("nodes connected", connected, needed)
        elif event.kind is EventKind.ROUND_START:
            self._asked[key] = event.asked or 0
            self._replies[key] = 0
            self._say(f"{where}: asked {event.asked} node(s)")
            self._set_bar(f"{where}: replies", 0, event.asked or 0)
        elif event.kind is EventKind.REPLY:
            self._replies[key] = count = self._replies.get(key, 0) + 1
            asked = self._asked.get(key, count)
            if self.live:
                self._set_bar(f"{where}: replies", count, asked)
            else:
                error = f" (error: {shown(event.reason)})" if event.reason else ""
                self._say(f"{where}: reply {count}/{asked} from {self._who(event)}{error}")
        elif event.kind is EventKind.RESULT:
            if event.accepted:
                self._say(f"{where}: {self._who(event)} [green]accepted[/green]")
            else:
                self._say(
                    f"{where}: {self._who(event)} [red]rejected[/red]: "
                    f"{shown(event.reason or 'no reason given')}"
                )
        elif event.kind is EventKind.ROUND_END:
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items())
            self._say(
                f"round {event.round}/{event.rounds} done: {event.trained} trained, "
                f"{event.evaluated} evaluated"
                + (f"; mean of institutions: {metrics}" if metrics else "")
                + (f"; {len(event.failures)} failure(s)" if event.failures else "")
            )
            for failure in event.failures:
                self._say(f"  [yellow]failure[/yellow]: {shown(failure)}")
        elif event.kind is EventKind.FAILED:
            self._say(f"[red]the ServerApp stopped the run[/red]: {shown(event.reason)}")
        elif event.kind is EventKind.FINISHED:
            self._say(f"all {event.rounds} round(s) done; the run folder is written")


def _min_nodes(state_dir: Path, asked: int | None, min_contributors: int) -> int:
    """The nodes a run waits for: ``asked``, else every node registered at the SuperLink.

    Says how many are registered and online now; exits 2 when the minimum can never be
    met (more than are registered, or none registered).
    """
    from countyfl.deployment.processes import ENROLLED_STATUSES, node_statuses

    statuses = node_statuses(state_dir)
    enrolled = [n for n, status in statuses.items() if status in ENROLLED_STATUSES]
    online = [n for n, status in statuses.items() if status == "online"]
    register = (
        f"register each institution's key with `countyfl server add-node "
        f"certs/nodes/NAME.pub --state-dir {state_dir}`"
    )
    if not enrolled:
        fail(f"no SuperNode is registered at the SuperLink of {state_dir}: {register}")
    needed = len(enrolled) if asked is None else asked
    if needed > len(enrolled):
        fail(
            f"--min-nodes {needed}, but only {len(enrolled)} node(s) are registered at the "
            f"SuperLink of {state_dir}: the run could never start; {register}, or lower "
            "--min-nodes"
        )
    how = "every registered node" if asked is None else "--min-nodes"
    if needed < min_contributors:
        fail(
            f"the run would wait for {needed} node(s) ({how}), fewer than min-contributors "
            f"{min_contributors}: every aggregate of that few institutions would be "
            f"discarded after the sites spent privacy budget on it; register at least "
            f"{min_contributors} nodes ({register}) or lower min-contributors in the task"
        )
    stderr().print(
        f"nodes: {len(online)} of {len(enrolled)} registered are online now; the run "
        f"waits for {needed} ({how})"
    )
    return needed


@run_app.command()
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
    min_nodes: Annotated[
        int | None,
        typer.Option(
            "--min-nodes",
            help="nodes that must be connected before a round starts [default: every node "
            "registered at the SuperLink]; at least min-contributors",
            min=1,
            show_default=False,
        ),
    ] = None,
    node_wait: Annotated[
        float,
        typer.Option(
            "--node-wait",
            help="seconds the run waits while fewer than --min-nodes are connected, before "
            "it stops with a message saying so",
            min=1,
        ),
    ] = 600,
    deadline: Annotated[
        float, typer.Option(help="seconds before an unfinished run is stopped", min=1)
    ] = 3600,
    app_dir: Annotated[
        Path | None, typer.Option("--app", help="the countyfl Flower app folder")
    ] = None,
) -> None:
    """Submit a federation to the county's SuperLink and follow it (with a deadline).

    Shows, as they happen, the nodes connected against the minimum, each round, each
    reply (which institution; used or rejected, and why) and each round's end; the
    ServerApp writes them to OUTPUT/events.jsonl, which this command follows.
    """
    from countyfl.deployment.processes import default_app_dir, submit_run
    from countyfl.errors import ConfigError
    from countyfl.privacy.modes import DpRandomness
    from countyfl.run_config import parse_run_config
    from countyfl.runs import EVENTS_FILE

    overrides = parse_overrides(config)
    if min_nodes is not None and "min-nodes" in overrides:
        fail("min-nodes is given twice (--min-nodes and --config min-nodes=...): give it once")
    output = output.resolve()
    overrides["output-dir"] = str(output)
    overrides.setdefault("node-wait-seconds", node_wait)
    if "scenario" in overrides:
        # A county's task file exists on this machine only: the run carries the task itself.
        from countyfl import scenarios

        try:
            overrides["scenario"] = scenarios.portable_key(str(overrides["scenario"]))
        except CountyflError as error:
            fail(error)
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
        asked = min_nodes if min_nodes is not None else parsed.min_nodes or None
        overrides["min-nodes"] = _min_nodes(state_dir, asked, parsed.min_contributors)
        app = app_dir or default_app_dir()
        console = stdout()
        with RunDisplay(console, output / EVENTS_FILE) as display:
            outcome = submit_run(
                state_dir,
                app,
                overrides,
                deadline_seconds=deadline,
                events=output / EVENTS_FILE,
                on_event=display,
                on_status=display.status,
            )
    except CountyflError as error:
        fail(error)
    digest = manifest_hash(manifest_for(parsed))
    console.print(
        f"run {outcome.run_id}: {outcome.status} after {outcome.elapsed_seconds:.0f} s "
        f"(task sha256 {digest[:12]}); output in {shown(output)}"
    )
    if not outcome.completed:
        if outcome.reason:
            fail(f"run {outcome.run_id}: {outcome.reason}", ExitCode.REFUSED)
        raise typer.Exit(code=ExitCode.REFUSED)
