"""How fast the countyfl command answers: each command timed as a whole process.

Every command that does not train imports only what it needs (the CLI loads a command
group's module when that group is run; torch, Opacus, TenSEAL and Flower only in the
commands that train). This times, over several runs each, ``countyfl --help`` (target
<= 0.5 s) and ``countyfl users list``, ``registry list`` and ``audit verify`` on a small
SQLite database (target <= 1.5 s), beside a bare Python start and an import of the four
heavy libraries (what every command paid before issue 14).

    python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PASSWORD = "a long enough benchmark password"
TARGETS = {"--help": 0.5, "users list": 1.5, "registry list": 1.5, "audit verify": 1.5}


def _run(command: list[str], env: dict[str, str], stdin: str | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        command, env=env, input=stdin, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def _times(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    _run(command, env)  # warm the file cache
    return [_run(command, env) for _ in range(runs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    countyfl = str(BIN / "countyfl")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "COUNTYFL_HOME": home, "FLWR_TELEMETRY_ENABLED": "0"}
        env.pop("COUNTYFL_DATABASE_URL", None)
        _run(
            [countyfl, "users", "add", "ada", "--role", "admin", "--password-stdin"],
            env,
            PASSWORD + "\n",
        )
        token = (
            subprocess.run(
                [countyfl, "users", "token", "ada", "--name", "bench", "--user", "ada"],
                env=env,
                input=PASSWORD + "\n",
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        env["COUNTYFL_TOKEN"] = token
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import torch, opacus, tenseal, flwr": [
                sys.executable,
                "-c",
                "import torch, opacus, tenseal, flwr",
            ],
            "--help": [countyfl, "--help"],
            "users list": [countyfl, "users", "list"],
            "registry list": [countyfl, "registry", "list"],
            "audit verify": [countyfl, "audit", "verify"],
        }
        print(f"{'command':38s} {'median':>8s} {'best':>8s}  target", flush=True)
        results = {}
        for label, command in commands.items():
            times = _times(command, env, args.runs)
            results[label] = statistics.median(times)
            target = TARGETS.get(label)
            verdict = (
                ""
                if target is None
                else f"<= {target} s: {'met' if results[label] <= target else 'NOT met'}"
            )
            print(f"{label:38s} {results[label]:7.2f}s {min(times):7.2f}s  {verdict}", flush=True)
        heavy = results["import torch, opacus, tenseal, flwr"]
        print(
            f"\nthe heavy libraries alone take {heavy:.2f} s to import; `users list` takes "
            f"{results['users list'] / heavy:.2f}x that, `--help` {results['--help'] / heavy:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
