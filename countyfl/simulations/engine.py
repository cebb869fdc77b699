"""Flower's Simulation Engine the way Flower 1.42 supports it: ``flwr run`` to a local SuperLink.

``flwr.simulation.run_simulation`` is deprecated ("use `flwr run`"). A simulation is now a
run submitted to a SuperLink started with ``--simulation``: its SuperExec starts a
``flwr-simulation`` process, which installs the app's FAB and runs the ServerApp and the
ClientApps on the Simulation Engine (Ray), sized by the run's federation config
(``num-supernodes``, Ray's CPUs).

:class:`SimulationLink` is that SuperLink, owned by one command:

- on 127.0.0.1 only, on a free port, with Flower's in-memory state; its ``FLWR_HOME``
  (connection, installed FAB, log) in an owner-only temporary folder removed on stop;
- started once per command (every seed of ``countyfl simulate`` is a run on it) and
  stopped with its whole process group when the command ends, fails or is interrupted,
  and sent SIGTERM by Linux if the command is killed: no SuperLink is left running;
- no phoning home: Flower's telemetry, update check and ``uv sync`` of the app are off.

Flower's own managed local SuperLink (``flwr run`` to ``local``) is not used: it is
detached, outlives the command on a fixed port, and keeps its state under ``~/.flwr``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from countyfl.errors import SimulationError
from countyfl.lifetime import die_with_parent
from countyfl.run_config import RunConfig
from countyfl.runs import EVENTS_FILE, EventKind, RunEvent

CONNECTION = "simulation"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
"""Set (e.g. ``10.0.0.1:6379``): the simulation joins that Ray cluster (docs/ray-cluster.md)."""
RAY_INLINE_BYTES = 1 << 20
"""Ray's inline-object limit on one machine: a CKKS ciphertext (8,192 values) is 127 KB,
over Ray's 100 KiB default; above it every message goes through the object store (5.8 ms
against 1.6 ms per 130 KB message, ``benchmarks/he_overhead.py --ray-inline-kib``)."""
START_TIMEOUT = 60.0
LOG_TAIL_LINES = 40


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_count() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def federation_config(num_institutions: int, verbose: bool = False) -> dict[str, Any]:
    """Flower's ``--federation-config`` of a simulation: one SuperNode per institution.

    On this machine Ray gets at most one CPU per institution and no more than the cores
    there are; on a cluster (``RAY_ADDRESS``) Ray refuses a size, which is the cluster's.
    """
    config: dict[str, Any] = {
        "num-supernodes": num_institutions,
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": 0.0,
        "init-args-log-to-driver": verbose,
    }
    if not os.environ.get(RAY_ADDRESS_ENV, "").strip():
        config["init-args-num-cpus"] = max(1, min(num_institutions, _cpu_count()))
    return config


def ray_environment() -> dict[str, str]:
    """Environment for the SuperLink (and so ``flwr-simulation`` and Ray) on this machine.

    Ray reads every system setting from ``RAY_<name>``: the inline-object limit is raised
    for a local Ray only, as a cluster's settings are those of its ``ray start``.
    """
    address = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    if address:
        return {RAY_ADDRESS_ENV: address}
    return {"RAY_max_direct_call_object_size": str(RAY_INLINE_BYTES)}


class SimulationLink:
    """A SuperLink in simulation mode on 127.0.0.1 for the life of one command."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.folder: Path | None = None
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._ready = False

    @property
    def log_file(self) -> Path:
        assert self.folder is not None
        return self.folder / "superlink.log"

    def __enter__(self) -> SimulationLink:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink in the background; :meth:`run` waits until it answers.

        The command loads its data and holds its key ceremony meanwhile, so the
        SuperLink's start-up (3-4 s of imports) overlaps them.
        """
        from countyfl.deployment.processes import FLWR_HOME_DIR

        self.folder = Path(tempfile.mkdtemp(prefix="countyfl-simulation-"))  # 0700
        (self.folder / FLWR_HOME_DIR).mkdir(mode=0o700)
        try:
            self._spawn()
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        from countyfl.deployment.processes import FLWR_HOME_DIR, flower_environment

        assert self.folder is not None
        home = self.folder / FLWR_HOME_DIR
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\ninsecure = true\n',
            encoding="utf-8",
        )
        env = flower_environment({"FLWR_HOME": str(home), **ray_environment()})
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "flower-superlink",
                    "--insecure",  # 127.0.0.1 only: the command's own processes
                    "--simulation",
                    "--isolation",
                    "subprocess",
                    "--disable-runtime-dependency-installation",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,  # its own group: stopping it takes Ray and all
                preexec_fn=die_with_parent,
            )
        self._ready = False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the SuperLink answers; SimulationError if it never does.

        A SuperLink that exits at start (its free port taken meanwhile) is started again
        on another port, twice at most.
        """
        if self.folder is None:
            raise SimulationError("the simulation's SuperLink was stopped")
        if self._ready:
            return
        for attempt in range(3):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process is not None:
                if self.process.poll() is not None:
                    break
                try:
                    url = f"http://{self.address}/health"
                    with urllib.request.urlopen(url, timeout=2) as reply:
                        if reply.status == 200:
                            self._ready = True
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            self._stop_process()
            if attempt < 2:
                self._spawn()
        raise SimulationError(
            "the local SuperLink for the simulation did not start: "
            + self.log_tail().strip()[-2000:]
        )

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Whatever of its group outlived it (flwr-simulation, Ray's workers) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the SuperLink and everything it started; remove its folder."""
        self._stop_process()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the SuperLink's own log."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def run_log(self, run_id: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of a run's log (``flwr log``: the ServerApp's and Ray's output)."""
        from countyfl.deployment.processes import flower_environment

        assert self.folder is not None
        try:
            done = subprocess.run(
                ["flwr", "log", run_id, CONNECTION, "--show"],
                capture_output=True,
                text=True,
                timeout=60,
                env=flower_environment({"FLWR_HOME": str(self.folder / "flwr")}),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ""
        return "\n".join((done.stdout + done.stderr).splitlines()[-lines:])

    def run(
        self,
        config: RunConfig,
        num_institutions: int,
        on_event: Callable[[RunEvent], None] | None = None,
    ) -> str:
        """Run one federation to its end; its run id. SimulationError if it did not complete.

        ``on_event`` gets each event the ServerApp writes to the run's ``events.jsonl`` as
        it appears (a round's end, a failure).
        """
        from countyfl.deployment.processes import DeploymentError, default_app_dir, submit_run

        self.wait_ready()
        assert self.folder is not None
        log: subprocess.Popen[bytes] | None = None

        def status(run_id: str, _status: str) -> None:
            nonlocal log
            if self.verbose and log is None:
                log = self._stream_log(run_id)

        try:
            outcome = submit_run(
                self.folder,
                default_app_dir(),
                config.to_run_config(),
                deadline_seconds=float("inf"),
                # `flwr ls` costs a CPU-second; the run's events say when it ends
                poll_seconds=15.0,
                first_poll_seconds=15.0,
                events=Path(config.output_dir) / EVENTS_FILE,
                on_event=on_event,
                on_status=status,
                connection=CONNECTION,
                federation_config=federation_config(num_institutions, self.verbose),
            )
        except DeploymentError as error:
            raise SimulationError(
                f"Flower refused the simulation of seed {config.seed}: {error}"
            ) from None
        finally:
            if log is not None:
                log.terminate()
                log.wait()
        if not outcome.completed:
            raise SimulationError(
                f"the federated run for seed {config.seed} ended {outcome.status}"
                + (f": {outcome.reason}" if outcome.reason else "")
                + f"\nits log (last lines):\n{self.run_log(outcome.run_id)}"
            )
        return outcome.run_id

    def _stream_log(self, run_id: str) -> subprocess.Popen[bytes]:
        """``flwr log --stream`` of the run to this command's own output (``--verbose``)."""
        from countyfl.deployment.processes import flower_environment

        assert self.folder is not None
        return subprocess.Popen(
            ["flwr", "log", run_id, CONNECTION, "--stream"],
            env=flower_environment({"FLWR_HOME": str(self.folder / "flwr")}),
            preexec_fn=die_with_parent,
        )


def round_ends(on_round_end: Callable[[int], None]) -> Callable[[RunEvent], None]:
    """An ``on_event`` that calls ``on_round_end(round)`` at each round's end."""

    def on_event(event: RunEvent) -> None:
        if event.kind is EventKind.ROUND_END and event.round is not None:
            on_round_end(event.round)

    return on_event
