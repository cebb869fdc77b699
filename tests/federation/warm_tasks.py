"""Tasks the template tests fork (imported by the template, run in its children)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

STATE = {"polluted": False}


def _write(out: str, text: str) -> None:
    Path(out).write_text(text + "\n")


def pollute_then_raise(out: str) -> None:
    STATE["polluted"] = True
    _write(out, "polluted")
    raise RuntimeError("a task that fails")


def report_state(out: str) -> None:
    polluted = "polluted" if STATE["polluted"] else "clean"
    _write(out, f"{os.getpid()} {os.getppid()} {polluted}")


def die(number: int) -> None:
    os.kill(os.getpid(), signal.Signals(number))


def open_descriptors(out: str) -> None:
    _write(out, " ".join(sorted(os.listdir("/proc/self/fd"), key=int)))


def fab_sources(app_dir: str, out: str) -> None:
    from countyfl.federation import warm

    warm.remember_installed_sources()
    dropped = warm.use_app_sources(Path(app_dir))
    _write(out, f"{dropped} {'countyfl.federation.warm' in sys.modules}")
