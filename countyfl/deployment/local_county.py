"""A whole county on one machine: SuperLink and one SuperNode per Fed-Heart-Disease hospital.

For trying a deployment locally and for ``benchmarks/deployment_round.py``: certificates,
node keys, CKKS keys, one site.toml and CSV export per hospital (approving the given
tasks), the SuperLink and the SuperNodes as separate processes on 127.0.0.1, with TLS and
node authentication. Everything lives under one folder and stops with :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countyfl.data import fed_heart_disease
from countyfl.deployment import (
    add_node,
    approve_task,
    export_hospital_csv,
    init_certificates,
    manifest_for,
    render_site_toml,
)
from countyfl.deployment.certs import CA_CERT_FILE
from countyfl.deployment.processes import DeploymentError, flower_environment, online_nodes
from countyfl.deployment.site import toml_string
from countyfl.privacy.he.keys import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE, init_keys
from countyfl.run_config import parse_run_config


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def countyfl_command(*args: str) -> list[str]:
    """``countyfl ARGS`` with this interpreter."""
    return [sys.executable, "-m", "countyfl.cli", *args]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` every second; DeploymentError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise DeploymentError(f"timed out after {timeout:.0f} s waiting for {what}")


def task_manifest(config: Mapping[str, Any], keys_dir: Path) -> Any:
    """The manifest of a run as a site derives it (the context path is not part of it)."""
    return manifest_for(
        parse_run_config({**config, "he-public-context": str(keys_dir / PUBLIC_CONTEXT_FILE)})
    )


@dataclass
class LocalCounty:
    """Paths and processes of a county running on this machine."""

    root: Path
    warm: bool = True  # nodes answer from warm processes (False: a process per message)
    address: str = ""
    sites: dict[str, Path] = field(default_factory=dict)
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def keys(self) -> Path:
        return self.root / "ckks"

    def prepare(
        self, approved: Iterable[Mapping[str, Any]], budgets: Mapping[str, float] | None = None
    ) -> None:
        """Certificates, keys and one site per hospital approving the ``approved`` runs."""
        init_certificates(self.certs)
        init_keys(self.keys)
        for hospital in fed_heart_disease.HOSPITALS:
            institution = fed_heart_disease.HOSPITAL_IDS[hospital]
            folder = self.root / "sites" / institution
            export_hospital_csv(hospital, folder / "export.csv")
            node = add_node(self.certs, institution)
            site = folder / "site.toml"
            site.write_text(
                render_site_toml(
                    institution_id=institution,
                    name=hospital,
                    level="county",
                    data_path=folder / "export.csv",
                    budget_epsilon=(budgets or {}).get(institution, 10.0),
                    delta=1e-3,
                    he_secret_context=self.keys / SECRET_CONTEXT_FILE,
                    node_private_key=node.private_key,
                    root_certificate=self.certs / CA_CERT_FILE,
                    state_dir=folder / "state",
                ),
                encoding="utf-8",
            )
            for config in approved:
                approve_task(site, task_manifest(config, self.keys), approved_by="site-lead")
            self.sites[institution] = site

    def prepare_sites(
        self, sites: Mapping[str, str], approved: Iterable[Mapping[str, Any]]
    ) -> None:
        """Certificates, keys and the given sites, each approving the ``approved`` runs.

        ``sites`` maps an institution id to its site.toml text without ``state_dir`` and
        ``[keys]`` (this county adds its own), in the institution's folder under
        ``sites/`` where the text's relative paths resolve.
        """
        init_certificates(self.certs)
        init_keys(self.keys)
        for institution, text in sites.items():
            folder = self.root / "sites" / institution
            folder.mkdir(parents=True, exist_ok=True)
            node = add_node(self.certs, institution)
            site = folder / "site.toml"
            site.write_text(
                f"state_dir = {toml_string(str(folder / 'state'))}\n"
                + text
                + "\n[keys]\n"
                + f"he_secret_context = {toml_string(str(self.keys / SECRET_CONTEXT_FILE))}\n"
                + f"node_private_key = {toml_string(str(node.private_key))}\n"
                + f"root_certificate = {toml_string(str(self.certs / CA_CERT_FILE))}\n",
                encoding="utf-8",
            )
            for config in approved:
                approve_task(site, task_manifest(config, self.keys), approved_by="site-lead")
            self.sites[institution] = site

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=flower_environment(),
            start_new_session=True,  # its own group: stopping it takes its children too
        )
        self.processes.append(process)
        return process

    def start(self, timeout: float = 180) -> None:
        """Start the SuperLink, register every site's key, start every SuperNode.

        If any of it fails, what was started is stopped before the error goes on: a
        county that never came up leaves no SuperLink or node running behind it.
        """
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._spawn(
            countyfl_command(
                "server",
                "start",
                "--certs",
                str(self.certs),
                "--state-dir",
                str(self.state),
                "--port",
                str(port),
            ),
            self.root / "superlink.log",
        )
        wait_for(lambda: (self.state / "flwr" / "config.toml").is_file(), 60, "the SuperLink")
        time.sleep(3)
        for institution in self.sites:
            done = subprocess.run(
                countyfl_command(
                    "server",
                    "add-node",
                    str(self.certs / "nodes" / f"{institution}.pub"),
                    "--state-dir",
                    str(self.state),
                ),
                capture_output=True,
                text=True,
                timeout=120,
                env=flower_environment(),
                check=False,
            )
            if done.returncode != 0:
                raise DeploymentError(
                    f"registering {institution} failed: {done.stdout}{done.stderr}"
                )
        for institution in self.sites:
            self.nodes[institution] = self.start_node(self.sites[institution], institution)
        wait_for(
            lambda: len(online_nodes(self.state)) == len(self.sites), timeout, "every SuperNode"
        )

    def start_node(self, site: Path, label: str) -> subprocess.Popen[bytes]:
        """Start one SuperNode for ``site``."""
        return self._spawn(
            countyfl_command(
                "node",
                "start",
                "--site",
                str(site),
                "--superlink",
                self.address,
                "--port",
                str(free_port()),
                "--warm" if self.warm else "--cold",
            ),
            self.root / f"node-{label}.log",
        )

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """Kill a process and its children at once (a node lost mid-round)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def run(
        self, config: Mapping[str, Any], output: Path, deadline: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """``countyfl run`` with these run-config values; waits for the end."""
        import json

        arguments = [
            "run",
            "--state-dir",
            str(self.state),
            "--output",
            str(output),
            "--public-context",
            str(self.keys / PUBLIC_CONTEXT_FILE),
            "--deadline",
            str(deadline),
        ]
        for key, value in config.items():
            arguments += ["--config", f"{key}={json.dumps(value)}"]
        return subprocess.run(
            countyfl_command(*arguments),
            capture_output=True,
            text=True,
            timeout=deadline + 120,
            env=flower_environment(),
            check=False,
        )

    def stop(self) -> None:
        """Stop every process this county started."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill(process)
