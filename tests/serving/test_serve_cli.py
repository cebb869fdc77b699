"""``countyfl serve`` as a process: refuses a missing secret, serves with a real one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from serving_support import CLINICIAN, HEART, HEART_PATIENT, SECRET, Deployment
from typer.testing import CliRunner

from countyfl.cli.serving import serve_command

RUN_SERVE = "import typer; from countyfl.cli.serving import serve_command; typer.run(serve_command)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(serve_command)
    result = CliRunner().invoke(app, ["--port", "9"], env={"COUNTYFL_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "no JWT signing secret" in result.output


def test_serve_runs_the_api(deployment: Deployment, tmp_path: Path) -> None:
    deployment.release()
    secret = tmp_path / "jwt.key"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    port = free_port()
    env = {
        **os.environ,
        "COUNTYFL_DATABASE_URL": deployment.url,
        "COUNTYFL_JWT_SECRET_FILE": str(secret),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_SERVE, "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "countyfl serve did not answer"
            time.sleep(0.2)
        headers = deployment.bearer(CLINICIAN)
        response = httpx.post(
            f"{base}/v1/models/{HEART}/predict", headers=headers, json={"patient": HEART_PATIENT}
        )
        assert response.status_code == 200, response.text
        assert httpx.get(f"{base}/docs").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
