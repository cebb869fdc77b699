"""Tasks the template tests fork (imported by the template, run in its children)."""

from __future__ import annotations

import os
import signal
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
