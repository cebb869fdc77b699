"""Warm institution processes: a SuperExec whose tasks start from a pre-imported template.

Flower's SuperNode, run with ``--isolation process``, leaves starting a ClientApp task to a
SuperExec that polls the node's Runtime API (``AcquireTask``) and hands each task's token
to an :class:`~flwr.supercore.superexec.executor.Executor`. Flower's own
``SubprocessExecutor`` starts a fresh ``flwr-clientapp`` interpreter per message, which
imports torch, Opacus, TenSEAL and Flower (seconds) before a few milliseconds of work.

:class:`WarmExecutor` is an Executor of the same protocol, driven by Flower's own
:class:`~flwr.supercore.superexec.plugin.AutoExecPlugin`. It keeps one *template* process
per node (:func:`serve_template`): an interpreter that imported all of that once and
loaded the site's configuration and data, then waits. Each task is a ``fork()`` of the
template that runs Flower's own ``run_clientapp`` (the body of ``flwr-clientapp``) with
the task's token, and exits. So Flower's isolation promises hold as with fresh processes:

- one task's state never reaches the next: every task is a new process, forked from a
  template that never runs a task itself (the template holds no torch threads, no network
  connection and no secret key: the CKKS secret context is loaded in each task);
- a task that raises replies with Flower's error and exits; one that crashes (even
  SIGKILL) ends only its own process: the template reaps it and goes on, and if the
  template itself dies the executor starts a new one and meanwhile starts tasks cold;
- the node's secret material stays in the node's processes: the template and its tasks
  are children of ``countyfl node start``, tokens travel over a private pipe (never on a
  command line), and every process of the node dies with it (``PR_SET_PDEATHSIG``).

The template imports the countyfl installed at the site. A task still runs the ClientApp
of the FAB the run carries: if the FAB's ``countyfl`` sources differ from the installed
ones, the task drops countyfl's modules and imports the FAB's (the heavy libraries stay
warm), exactly as a fresh ``flwr-clientapp`` would.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from countyfl.errors import CountyflError
from countyfl.lifetime import die_with_parent

TASK_TARGET = "countyfl.federation.warm:run_clientapp_task"
POLL_ENV = "COUNTYFL_SUPEREXEC_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 0.2
TEMPLATE_START_TIMEOUT = 600.0
# What a task needs that is slow to import; imported once, in the template.
TEMPLATE_IMPORTS = (
    "torch",
    "torch._dynamo",  # torch.optim imports it at the first optimizer (1-2 s per task)
    "opacus",
    "tenseal",
    "numpy",
    "pandas",
    "sklearn.metrics",
    "flwr.supernode.runtime.run_clientapp",
    "httpcore",  # httpx imports it at a task's first Runtime API client (0.2-0.7 s)
    "countyfl.privacy.dp",
    "countyfl.federation.client_app",
    # What tasks still imported, each in every task (profiled, about 60 ms a task): the
    # tasks' own entry point (this module, which the template runs as __main__), the
    # data pipeline a task's scenario loads, Flower's TLS helpers, the profiler hooks
    # torch's optimizer imports at its first step, and the FAB's zip codec.
    "countyfl.federation.warm",
    "countyfl.clinical.pipeline",
    "flwr.supercore.tls",
    "torch.profiler._cupti_monitor",
    "encodings.cp437",
)


class WarmProcessError(CountyflError):
    """The template process could not be started or did not answer."""


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attribute = target.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return function


# -- the template (fork server) ---------------------------------------------------------


def _log(message: str) -> None:
    print(f"[countyfl warm template {os.getpid()}] {message}", file=sys.stderr, flush=True)


def _run_child(
    target: str, kwargs: Mapping[str, Any], requests: int, replies: int, parent: int
) -> None:
    """In a forked task: forget the template's pipes and signal handlers, run, exit."""
    code = 1
    try:
        os.close(requests)
        os.close(replies)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent(signal.SIGKILL)
        if os.getppid() != parent:  # the template died between fork and prctl
            os._exit(1)
        result = _resolve(target)(**kwargs)
        code = int(result) if isinstance(result, int) else 0
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException as error:  # a task that raises must not reach the template's loop
        print(f"task {os.getpid()} raised {type(error).__name__}: {error}", file=sys.stderr)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never run the template's atexit handlers in a task


def _reap(running: dict[int, str]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            running.clear()
            return
        if pid == 0:
            return
        label = running.pop(pid, "?")
        if os.WIFSIGNALED(status):
            _log(f"task {label} (pid {pid}) was killed by signal {os.WTERMSIG(status)}")
        elif os.waitstatus_to_exitcode(status) != 0:
            _log(f"task {label} (pid {pid}) exited with code {os.waitstatus_to_exitcode(status)}")


def serve_template(
    requests: int, replies: int, site_file: str | None, imports: tuple[str, ...]
) -> None:
    """The template's loop: import once, then fork one child per request line.

    A request is one JSON line ``{"id": ..., "target": "module:function", "kwargs": {...}}``
    on ``requests``; the reply is one JSON line ``{"id": ..., "pid": ...}`` (or
    ``{"id": ..., "error": ...}``) on ``replies``. End of file on ``requests`` ends it.
    """
    die_with_parent()
    started = time.perf_counter()
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as error:  # a library without it: tasks import what they need
            _log(f"not preloaded: {module} ({error})")
    if site_file:
        from countyfl.federation.client_app import warm_site

        try:
            warm_site(site_file)
        except CountyflError as error:  # each task reports it in its own reply
            _log(f"site not preloaded: {error}")
    if "countyfl.federation.client_app" in imports:
        remember_installed_sources()
    reply = os.fdopen(replies, "w", buffering=1, encoding="utf-8", closefd=False)
    reply.write(json.dumps({"ready": time.perf_counter() - started}) + "\n")
    _log(f"ready after {time.perf_counter() - started:.1f} s of imports and site set-up")
    running: dict[int, str] = {}
    buffer = b""
    parent = os.getpid()
    while True:
        _reap(running)
        ready, _, _ = select.select([requests], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(requests, 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            label = str(request.get("id", ""))
            try:
                pid = os.fork()
            except OSError as error:
                reply.write(json.dumps({"id": label, "error": str(error)}) + "\n")
                continue
            if pid == 0:
                _run_child(request["target"], request.get("kwargs", {}), requests, replies, parent)
            running[pid] = label
            reply.write(json.dumps({"id": label, "pid": pid}) + "\n")
    for pid in list(running):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


class Template:
    """A template process of this node, and the pipes to it (owned by the SuperExec)."""

    def __init__(
        self,
        site_file: str | None,
        *,
        imports: tuple[str, ...] = TEMPLATE_IMPORTS,
        env: Mapping[str, str] | None = None,
        log: IO[bytes] | None = None,
    ) -> None:
        request_read, self._requests = os.pipe()
        self._replies, reply_write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "countyfl.federation.warm",
            "template",
            "--requests",
            str(request_read),
            "--replies",
            str(reply_write),
            "--imports",
            ",".join(imports),
        ]
        if site_file:
            command += ["--site", site_file]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            pass_fds=(request_read, reply_write),
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
        )
        os.close(request_read)
        os.close(reply_write)
        self._buffer = b""
        self.ready_seconds: float | None = None
        self._counter = 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def _line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(0.0, min(left, 0.5)))
            if not ready and left <= 0:
                raise WarmProcessError(
                    f"the template process {self.process.pid} did not answer in {timeout:.0f} s "
                    f"(exit code {self.process.poll()}); see the node's log"
                )
            if ready:
                chunk = os.read(self._replies, 65536)
                if not chunk:
                    raise WarmProcessError(
                        f"the template process {self.process.pid} closed its pipe "
                        f"(exit code {self.process.wait(timeout=5)}); see the node's log"
                    )
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def wait_ready(self, timeout: float = TEMPLATE_START_TIMEOUT) -> float:
        """Wait until the template has imported everything; its import time in seconds."""
        if self.ready_seconds is None:
            self.ready_seconds = float(self._line(timeout)["ready"])
        return self.ready_seconds

    def fork(
        self,
        target: str,
        kwargs: Mapping[str, Any],
        timeout: float = 30.0,
        ready_timeout: float = TEMPLATE_START_TIMEOUT,
    ) -> int:
        """Start ``target(**kwargs)`` in a fresh fork of the template; its pid.

        WarmProcessError if the template is not ready within ``ready_timeout`` seconds,
        is gone, or does not answer within ``timeout``.
        """
        self.wait_ready(ready_timeout)
        self._counter += 1
        label = str(self._counter)
        request = {"id": label, "target": target, "kwargs": dict(kwargs)}
        try:
            os.write(self._requests, (json.dumps(request) + "\n").encode())
        except BrokenPipeError as error:
            raise WarmProcessError(
                f"the template process {self.process.pid} is gone (exit code "
                f"{self.process.poll()}); see the node's log"
            ) from error
        answer = self._line(timeout)
        if "pid" not in answer:
            raise WarmProcessError(f"the template could not fork: {answer.get('error')}")
        return int(answer["pid"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._requests)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            os.close(self._replies)


# -- what a task runs -------------------------------------------------------------------

_INSTALLED: dict[str, str] = {}


def _sources(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
    }


def remember_installed_sources() -> None:
    """Digest the installed countyfl's sources (in the template, once)."""
    import countyfl

    _INSTALLED.clear()
    _INSTALLED.update(_sources(Path(countyfl.__file__).parent))


def use_app_sources(app_dir: Path) -> bool:
    """Make the next import of countyfl come from the FAB in ``app_dir`` if it differs.

    Returns True if countyfl's pre-imported modules were dropped (the FAB's sources differ
    from the installed ones the template imported).
    """
    package = app_dir / "countyfl"
    if not package.is_dir() or not _INSTALLED or _sources(package) == _INSTALLED:
        return False
    for name in [n for n in sys.modules if n == "countyfl" or n.startswith("countyfl.")]:
        del sys.modules[name]
    return True


def installed_fab_path(fab: bytes) -> Path | None:
    """Where Flower installs these exact FAB bytes (``flwr.cli.install``), if it did already.

    Flower's ``install_from_fab`` unpacks the whole FAB and checks every file's hash on
    every message, then keeps an install already at that path (the path names the FAB's
    sha256): 0.3-1 s of each task at a node, for nothing after its first. Only the FAB's
    pyproject.toml is read here; anything unexpected is None (Flower installs it).
    """
    import tomllib
    import zipfile
    from io import BytesIO

    from flwr.common.config import get_metadata_from_config
    from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION
    from flwr.supercore.utils import get_flwr_home

    try:
        with zipfile.ZipFile(BytesIO(fab)) as archive:
            config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
        fab_id, version = get_metadata_from_config(config)
        publisher, project_name = fab_id.split("/")
    except Exception:
        return None
    digest = hashlib.sha256(fab).hexdigest()[:FAB_HASH_TRUNCATION]
    path = Path(get_flwr_home()) / APP_DIR / f"{publisher}.{project_name}.{version}.{digest}"
    return path if path.is_dir() else None


def install_fab_once(
    fab_file: Path | bytes, install_dir: Path | None = None, skip_prompt: bool = False
) -> Path:
    """Flower's ``install_from_fab``, returning at once the install it would keep anyway."""
    from flwr.cli.install import install_from_fab

    if isinstance(fab_file, bytes) and install_dir is None and skip_prompt:
        installed = installed_fab_path(fab_file)
        if installed is not None:
            return installed
    return install_from_fab(fab_file, install_dir, skip_prompt)


OBJECT_PULL_BACKOFF = (0.05, 0.5)
"""A task's first wait and longest wait (s) for a message object its node is still pulling."""


def prompt_object_pulls(pull: Callable[..., Any]) -> Callable[..., Any]:
    """Flower's ``pull_and_inflate_object_from_tree`` retrying a missing object promptly.

    A node hands a message to its task as soon as it arrives, while it is still pulling
    the message's objects from the SuperLink; the task's first pull of an object not there
    yet waits Flower's initial backoff of 1 s (``flwr.supercore.constant``) although the
    object is usually there a few milliseconds later: about 1 s of every task at a node.
    These retries go to the node's own Runtime API on 127.0.0.1; the total time allowed and
    the number of tries are Flower's.
    """
    initial, cap = OBJECT_PULL_BACKOFF
    return functools.partial(pull, initial_backoff=initial, backoff_cap=cap)


def run_clientapp_task(
    runtime_api_address: str,
    token: str,
    insecure: bool,
    root_certificates_path: str | None,
    parent_pid: int | None,
) -> None:
    """One ClientApp task in a fork of the template: Flower's ``flwr-clientapp`` body."""
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.config import get_project_dir
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime import run_clientapp as runtime

    def load_with_fab_sources(
        default_app_ref: str, app_path: str | None, multi_app: bool
    ) -> Callable[[str, str, str], Any]:
        load = get_load_client_app_fn(default_app_ref, app_path, multi_app)

        def _load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
            if use_app_sources(get_project_dir(fab_id, fab_version, fab_hash)):
                print("the run's FAB differs from the installed countyfl: importing the FAB's")
            return load(fab_id, fab_version, fab_hash)

        return _load

    # The FAB is installed and loaded by Flower's own code below; only the module lookup
    # is checked against the FAB's sources first, and a FAB this node installed already is
    # not unpacked again (this process is a throwaway fork).
    runtime.get_load_client_app_fn = load_with_fab_sources  # type: ignore[attr-defined]
    runtime.install_from_fab = install_fab_once  # type: ignore[attr-defined]
    runtime.pull_and_inflate_object_from_tree = prompt_object_pulls(  # type: ignore[attr-defined]
        runtime.pull_and_inflate_object_from_tree  # type: ignore[attr-defined]
    )
    runtime.run_clientapp(
        runtime_api_address=runtime_api_address,
        token=token,
        insecure=insecure,
        certificates=validate_and_resolve_root_certificates(root_certificates_path, insecure),
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


# -- the SuperExec: Flower's plugin and polling loop with the warm executor -------------


class WarmExecutor:
    """A Flower SuperExec Executor that starts ClientApp tasks from the node's template.

    Tasks of other types, and every task while no template answers, start the way
    Flower's ``SubprocessExecutor`` starts them (a fresh process): slower, never lost.
    """

    def __init__(self, site_file: str | None, *, imports: tuple[str, ...] = TEMPLATE_IMPORTS):
        from flwr.supercore.superexec.executor import SubprocessExecutor

        self._site_file = site_file
        self._imports = imports
        self._cold = SubprocessExecutor()
        self.template = Template(site_file, imports=imports)
        self.warm_launches = 0
        self.cold_launches = 0

    def get_eligible_capacity(
        self,
        supported_task_types: set[Any],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[Any], set[str]]:
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            self.cold_launches += 1
            return self._cold.launch(spec)
        try:
            self.template.fork(
                TASK_TARGET,
                {
                    "runtime_api_address": spec.runtime_api_address,
                    "token": spec.token,
                    "insecure": spec.insecure,
                    "root_certificates_path": spec.root_certificates_path,
                    "parent_pid": spec.parent_pid,
                },
                ready_timeout=0.0,  # a template still importing: this task starts cold
            )
        except WarmProcessError as error:
            print(f"countyfl: {error}; starting this task cold", file=sys.stderr, flush=True)
            self.cold_launches += 1
            return self._cold.launch(spec)
        self.warm_launches += 1
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Start a new template if the node's one died (tasks start cold until it is up)."""
        if not self.template.alive():
            print(
                f"countyfl: the template process {self.template.process.pid} ended (code "
                f"{self.template.process.poll()}); starting a new one",
                file=sys.stderr,
                flush=True,
            )
            self.template.close()
            self.template = Template(self._site_file, imports=self._imports)

    def close(self) -> None:
        self.template.close()


def poll_seconds() -> float:
    raw = os.environ.get(POLL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_POLL_SECONDS
    except ValueError:
        raise WarmProcessError(f"{POLL_ENV}={raw!r} is not a number of seconds") from None
    return min(max(value, 0.01), 60.0)


def run_superexec(
    runtime_api_address: str, site_file: str | None, parent_pid: int | None = None
) -> None:
    """Flower's SuperExec loop (flwr.supercore.superexec.run_superexec) with WarmExecutor.

    Flower 1.42's ``flower-superexec`` chooses its executor from a closed list
    (subprocess, kubernetes); the loop is short, so it is repeated here with Flower's own
    Runtime API client, interceptors, plugin and launch-result handling.
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.exit import register_signal_handlers
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.plugin import AutoExecPlugin
    from flwr.supercore.superexec.run_superexec import _handle_launch_result
    from flwr.supercore.telemetry import EventType

    die_with_parent()
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    interval = poll_seconds()
    executor = WarmExecutor(site_file)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,  # the SuperNode's Runtime API on 127.0.0.1, as Flower's own SuperExec
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    register_signal_handlers(
        event_type=EventType.RUN_SUPEREXEC_LEAVE,
        exit_message="countyfl SuperExec terminated gracefully.",
        grpc_servers=[],
        exit_handlers=[client.close, executor.close],
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        executor=executor,
    )
    executor.template.wait_ready()
    try:
        while True:
            executor.reconcile()
            types, fab_hashes = executor.get_eligible_capacity(set(plugin.supported_task_types))
            answer = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=types, agentapp_fab_hashes=fab_hashes)
            )
            if answer.HasField("task") and answer.token:
                _handle_launch_result(
                    plugin.launch_task(token=answer.token, task=answer.task), answer.task
                )
                continue  # another task may be waiting: ask again at once
            time.sleep(interval)
    finally:
        client.close()
        executor.close()


def main(argv: list[str] | None = None) -> None:
    import countyfl

    countyfl.disable_phone_home()
    parser = argparse.ArgumentParser(prog="python -m countyfl.federation.warm")
    commands = parser.add_subparsers(dest="command", required=True)
    template = commands.add_parser("template", help="the pre-imported template (internal)")
    template.add_argument("--requests", type=int, required=True)
    template.add_argument("--replies", type=int, required=True)
    template.add_argument("--site")
    template.add_argument("--imports", default=",".join(TEMPLATE_IMPORTS))
    superexec = commands.add_parser("superexec", help="SuperExec with warm ClientApp tasks")
    superexec.add_argument("--runtime-api-address", required=True)
    superexec.add_argument("--site")
    superexec.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    if args.command == "template":
        imports = tuple(m for m in args.imports.split(",") if m)
        serve_template(args.requests, args.replies, args.site, imports)
    else:
        run_superexec(args.runtime_api_address, args.site, args.parent_pid)


if __name__ == "__main__":
    main()
