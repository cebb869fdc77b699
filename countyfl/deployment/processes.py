"""Flower Deployment Engine wiring: the county's SuperLink, the sites' SuperNodes, run submission.

Everything here builds command lines and environments for Flower's own daemons and CLI
(``flower-superlink``, ``flower-supernode``, ``flwr``) and runs them; what the processes do
is Flower's. Facts this relies on (checked with flwr 1.42):

- The SuperLink serves the Fleet, Control and Runtime APIs over HTTPS on one host:port.
  Every SuperNode and ``flwr`` connect there; each SuperNode serves its own runtime API on
  its own local port (two nodes on one host need two ports).
- With ``--enable-supernode-auth`` only nodes whose public key was registered
  (``flwr supernode register``) may connect; others exit with Flower's code 305.
- ``flwr`` reads connections from ``$FLWR_HOME/config.toml``; we keep one per county
  state folder, with absolute certificate paths.
- The daemons start ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by bare
  name, so this interpreter's bin folder goes first on PATH; telemetry, update checks and
  per-run ``uv sync`` of the app's dependencies are switched off.
- Open-source Flower's Control API has no user authentication: whoever reaches the port can
  submit a run. The sites' task approval is the line of defence (docs/deployment.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countyfl.errors import CountyflError
from countyfl.lifetime import die_with_parent
from countyfl.runs import EventKind, EventReader, RunEvent

logger = logging.getLogger(__name__)

CONNECTION = "county"
DEFAULT_PORT = 8000
DEFAULT_NODE_PORT = 9094
FLWR_HOME_DIR = "flwr"
SUPERLINK_DATABASE = "superlink.db"
STATUS_ATTEMPTS = 3
"""Polls of a run's status in a row that may go unanswered before following it fails."""


class DeploymentError(CountyflError):
    """A Flower daemon or command could not do what was asked."""


def flower_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every Flower process of ours runs with (no phoning home, no uv)."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    env.update(extra or {})
    return env


def flwr_home(state_dir: Path) -> Path:
    """The FLWR_HOME of the county operator's ``flwr`` commands."""
    return state_dir.resolve() / FLWR_HOME_DIR


def write_connection(state_dir: Path, address: str, root_certificate: Path) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with the county connection (absolute CA path)."""
    home = flwr_home(state_dir)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{root_certificate.resolve()}"\n',
        encoding="utf-8",
    )
    return path


def superlink_command(
    *,
    ca_certificate: Path,
    server_certificate: Path,
    server_private_key: Path,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication and a persistent database."""
    return [
        "flower-superlink",
        "--ssl-ca-certfile",
        str(ca_certificate.resolve()),
        "--ssl-certfile",
        str(server_certificate.resolve()),
        "--ssl-keyfile",
        str(server_private_key.resolve()),
        "--enable-supernode-auth",
        "--database",
        str(state_dir.resolve() / SUPERLINK_DATABASE),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]


def supernode_command(
    site_file: Path,
    *,
    root_certificate: Path,
    private_key: Path,
    superlink: str,
    port: int = DEFAULT_NODE_PORT,
    warm: bool = True,
) -> list[str]:
    """``flower-supernode`` for one site: TLS, its auth key and its site.toml as node config.

    ``warm``: ``--isolation process``, so that our SuperExec (:func:`superexec_command`)
    starts its ClientApp tasks; otherwise Flower's own SuperExec starts a fresh
    ``flwr-clientapp`` process per message.
    """
    isolation = ["--isolation", "process"] if warm else []
    return [
        "flower-supernode",
        "--superlink",
        superlink,
        "--root-certificates",
        str(root_certificate.resolve()),
        "--auth-supernode-private-key",
        str(private_key.resolve()),
        "--node-config",
        f'site-config="{site_file.resolve()}"',
        "--port",
        str(port),
        *isolation,
    ]


def superexec_command(site_file: Path, *, port: int, parent_pid: int) -> list[str]:
    """countyfl's SuperExec for a node (``countyfl.federation.warm``): warm ClientApp tasks."""
    return [
        sys.executable,
        "-m",
        "countyfl.federation.warm",
        "superexec",
        "--runtime-api-address",
        f"127.0.0.1:{port}",
        "--site",
        str(site_file.resolve()),
        "--parent-pid",
        str(parent_pid),
    ]


def supervise(commands: Sequence[Sequence[str]], env: Mapping[str, str]) -> int:
    """Run the node's daemons until one ends or we are told to stop; its exit code.

    ``countyfl node start`` runs the SuperNode and countyfl's SuperExec this way, so that
    a site still runs one command: when either daemon ends (a refused node key, a crash)
    the other is stopped and the command exits with the first one's code; SIGTERM or
    SIGINT stops both. Each daemon dies with this process, even if it is SIGKILLed.
    """
    stop: list[int] = []

    def _stop(number: int, _frame: Any) -> None:
        stop.append(number)

    previous = {n: signal.signal(n, _stop) for n in (signal.SIGTERM, signal.SIGINT)}
    children = [
        subprocess.Popen(list(command), env=dict(env), preexec_fn=die_with_parent)
        for command in commands
    ]
    code = 0
    try:
        while not stop:
            ended = [c for c in children if c.poll() is not None]
            if ended:
                code = ended[0].returncode
                break
            time.sleep(0.5)
        else:
            code = 128 + stop[0]
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for number, handler in previous.items():
            signal.signal(number, handler)
    return code


def _flwr(state_dir: Path, *args: str, timeout: float = 120) -> Any:
    """Run ``flwr ARGS --format json`` against the county connection; return its JSON."""
    command = ["flwr", *args, "--format", "json"]
    env = flower_environment({"FLWR_HOME": str(flwr_home(state_dir))})
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise DeploymentError(f"`{' '.join(command)}` did not answer in {timeout:.0f} s") from error
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise DeploymentError(
            f"`{' '.join(command)}` failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-800:]}"
        ) from None
    if not answer.get("success", False):
        raise DeploymentError(
            f"`{' '.join(command)}` failed: {answer.get('error-message', answer)}"
        )
    return answer


class RunStatusReader:
    """A run's status from the SuperLink's Control API, over one connection kept open.

    ``flwr ls`` is a new interpreter importing Flower and a new TLS connection every
    call: about 1.5 CPU-seconds at the caller and a handshake at the SuperLink. A
    deployment polls every 2 s, so on a 2-core county machine the polls took a quarter of
    a round's CPU (measured in docs/deployment.md). This asks the same question Flower's
    ``flwr ls --run-id`` asks (``ListRuns``), with Flower's own client and status text,
    from this process. If Flower's client cannot be made here (a connection this process
    cannot read, another Flower), it says so once on the log and asks ``flwr ls``.

    Flower's client reads ``FLWR_HOME`` from the environment, which is the process's:
    the reader sets it under a lock while Flower reads it, and callers poll from one thread.
    """

    _environment = threading.Lock()

    def __init__(self, state_dir: Path, connection: str = CONNECTION) -> None:
        self.state_dir = state_dir
        self.connection = connection
        self._client: Any = None
        self._fallback = False

    @contextlib.contextmanager
    def _home(self) -> Iterator[None]:
        """FLWR_HOME set to the county's while Flower's client reads its configuration."""
        with self._environment:
            previous = os.environ.get("FLWR_HOME")
            os.environ["FLWR_HOME"] = str(flwr_home(self.state_dir))
            try:
                yield
            finally:
                if previous is None:
                    os.environ.pop("FLWR_HOME", None)
                else:
                    os.environ["FLWR_HOME"] = previous

    def _connect(self) -> Any:
        if self._client is None and not self._fallback:
            try:
                from flwr.cli.flower_config import read_superlink_connection
                from flwr.cli.run_utils import format_runs  # noqa: F401  (status() needs them)
                from flwr.cli.utils import init_http_client_from_connection
                from flwr.common.serde import run_from_proto  # noqa: F401
                from flwr.proto.control_pb2 import ListRunsRequest  # noqa: F401

                # Flower's helper prints "Using SuperLink: ..." for its CLI's user
                with self._home(), contextlib.redirect_stdout(io.StringIO()):
                    self._client = init_http_client_from_connection(
                        read_superlink_connection(self.connection)
                    )
            except Exception as error:  # any failure: Flower's own CLI, which says what is wrong
                logger.warning(
                    "asking run statuses with `flwr ls` (Flower's Control API client could "
                    "not be made here: %s: %s)",
                    type(error).__name__,
                    error,
                )
                self._fallback = True
        return self._client

    def status(self, run_id: str) -> tuple[str, str]:
        """The run's status text (``running``, ``finished:completed``...) and its details."""
        client = self._connect()
        if client is None:
            runs = _flwr(self.state_dir, "ls", self.connection, "--run-id", run_id).get("runs", [])
            if not runs:
                raise DeploymentError(f"the SuperLink knows no run {run_id}")
            return str(runs[0]["status"]), str(runs[0].get("status-details", ""))
        from flwr.cli.run_utils import format_runs
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        try:
            with self._home():
                answer = client.ListRuns(ListRunsRequest(run_id=int(run_id)))
            runs = [run_from_proto(run) for run in answer.run_dict.values()]
            rows = format_runs(runs, answer.now)
        except Exception as error:  # Flower's client raises its transport's errors
            raise DeploymentError(
                f"the SuperLink did not say how run {run_id} stands: "
                f"{type(error).__name__}: {error}"
            ) from None
        if not rows:
            raise DeploymentError(f"the SuperLink knows no run {run_id}")
        return rows[0].status_text, rows[0].details

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def register_node(state_dir: Path, public_key: Path) -> str:
    """Register a SuperNode's public key with the SuperLink; returns Flower's node id."""
    answer = _flwr(state_dir, "supernode", "register", str(public_key.resolve()), CONNECTION)
    return str(answer.get("node-id", ""))


def node_statuses(state_dir: Path) -> dict[str, str]:
    """Every node registered at the SuperLink: node id -> Flower's status.

    ``registered`` (never connected yet), ``online``, ``offline`` or ``unregistered``.
    """
    answer = _flwr(state_dir, "supernode", "list", CONNECTION)
    return {str(n["node-id"]): str(n.get("status", "")) for n in answer.get("nodes", [])}


ENROLLED_STATUSES = frozenset({"registered", "online", "offline"})
"""Statuses of nodes that may take part in a run (their key is registered)."""


def online_nodes(state_dir: Path) -> list[str]:
    """Node ids the SuperLink sees online now."""
    return [node for node, status in node_statuses(state_dir).items() if status == "online"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def run_config_argument(overrides: Mapping[str, Any]) -> str:
    """Flower's ``--run-config`` string for kebab-case overrides."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in overrides.items())


@dataclass(frozen=True)
class RunOutcome:
    """How a submitted run ended."""

    run_id: str
    status: str
    elapsed_seconds: float
    reason: str = ""  # why the ServerApp stopped the run, when it said so (events.jsonl)

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def write_run_config(folder: Path, overrides: Mapping[str, Any]) -> Path:
    """The run-config overrides as a TOML file for ``flwr run --run-config FILE.toml``.

    A file, not Flower's ``key=value`` string: that string's parser splits a quoted value
    at a quote inside it (a path with ``"`` in it), where TOML escapes it.
    """
    from countyfl.deployment.site import toml_string

    lines = []
    for key, value in overrides.items():
        text = toml_string(value) if isinstance(value, str) else _toml_value(value)
        lines.append(f"{toml_string(key)} = {text}")
    handle, name = tempfile.mkstemp(prefix="run-config-", suffix=".toml", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return Path(name)


SKIPPED_APP_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        "node_modules",
    }
)
"""Folders never part of a FAB that ``flwr run`` would still walk file by file."""


def stage_app(app_dir: Path, folder: Path) -> Path:
    """A copy of the app folder without its virtual environment and caches, for ``flwr run``.

    Flower builds the FAB by resolving every file under the app folder before it applies
    its include rules: in a checkout with its ``.venv`` that is ~50,000 files and 6-9
    CPU-seconds a run. The copy holds the same app files, so the FAB (and its hash) is the
    same; Flower's own rules (``fab-include``, ``.gitignore``) still decide what goes in.
    """
    source = app_dir.resolve()
    target = folder / "app"
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [
            name
            for name in dirnames
            if name not in SKIPPED_APP_DIRS and not (here / name / "pyvenv.cfg").exists()
        ]
        destination = target / here.relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            path = here / name
            if not path.is_symlink():  # Flower leaves symlinks out too
                shutil.copy2(path, destination / name)
    return target


def submit_run(
    state_dir: Path,
    app_dir: Path,
    overrides: Mapping[str, Any],
    *,
    deadline_seconds: float = 3600,
    poll_seconds: float = 2.0,
    events: Path | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
    on_status: Callable[[str, str], None] | None = None,
    tick_seconds: float = 0.25,
    connection: str = CONNECTION,
    federation_config: Mapping[str, Any] | None = None,
    first_poll_seconds: float = 0.0,
) -> RunOutcome:
    """Submit the federation and follow it until it ends; stop it when the deadline passes.

    ``events``: the run's ``events.jsonl`` (its output folder, written by the ServerApp);
    each new event of this run is handed to ``on_event`` as it appears, and the run's
    status is asked of the SuperLink every ``poll_seconds`` (every second once the
    ServerApp said it finished or failed) and handed to ``on_status`` with the run id
    (``submitted`` first). The ServerApp bounds its own wait for nodes
    (``node-wait-seconds``); the deadline bounds everything else. The first status is
    asked ``first_poll_seconds`` after the submission. ``connection`` names
    the SuperLink in ``state_dir``'s ``flwr/config.toml``; ``federation_config``: a
    simulation's ``num-supernodes`` and Ray settings (Flower's ``--federation-config``).
    """
    reader = EventReader(events, skip_existing=True) if events is not None else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="countyfl-run-") as folder:
        federation = (
            ["--federation-config", run_config_argument(federation_config)]
            if federation_config
            else []
        )
        answer = _flwr(
            state_dir,
            "run",
            str(stage_app(app_dir, Path(folder))),
            connection,
            "--run-config",
            str(write_run_config(Path(folder), overrides)),
            *federation,
            timeout=300,
        )
    run_id = str(answer["run-id"])
    status = "submitted"
    reason = ""
    ended = False
    if on_status is not None:
        on_status(run_id, status)

    next_poll = started + first_poll_seconds

    def follow() -> None:
        nonlocal reason, ended, next_poll
        for event in reader.read_new() if reader is not None else ():
            if event.run_id and event.run_id != run_id:
                continue  # another run writing to the same folder
            if event.kind is EventKind.FAILED:
                reason = event.reason
            if event.kind in (EventKind.FAILED, EventKind.FINISHED) and not ended:
                ended = True
                next_poll = min(next_poll, time.monotonic() + 1.0)
            if on_event is not None:
                on_event(event)

    statuses = RunStatusReader(state_dir, connection)
    unanswered = 0
    try:
        while True:
            follow()
            now = time.monotonic()
            if now - started >= deadline_seconds:
                break
            if now >= next_poll:
                try:
                    status, details = statuses.status(run_id)
                    unanswered = 0
                except DeploymentError:
                    # A poll lost (a timeout, a reset connection) is asked again; the
                    # SuperLink not answering for STATUS_ATTEMPTS polls in a row ends it.
                    unanswered += 1
                    if unanswered >= STATUS_ATTEMPTS:
                        raise
                    next_poll = now + poll_seconds
                    continue
                if on_status is not None:
                    on_status(run_id, status)
                if status.startswith("finished"):
                    follow()
                    if not reason and status != "finished:completed" and details != "N/A":
                        reason = details
                    return RunOutcome(run_id, status, time.monotonic() - started, reason)
                next_poll = now + (min(poll_seconds, 1.0) if ended else poll_seconds)
            time.sleep(tick_seconds)
    finally:
        statuses.close()
    _flwr(state_dir, "stop", run_id, connection)
    return RunOutcome(
        run_id,
        f"stopped: deadline of {deadline_seconds:.0f} s passed (was {status})",
        time.monotonic() - started,
        reason,
    )


def default_app_dir() -> Path:
    """The Flower app folder: the countyfl project root holding pyproject.toml."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise DeploymentError(
            f"no pyproject.toml in {root}: run from a countyfl checkout or pass --app DIR"
        )
    return root


def start(
    command: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a daemon in the background with its output in ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handle = log_file.open("ab")
    return subprocess.Popen(
        list(command),
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=dict(env or flower_environment()),
    )
