"""Processes that end with their parent (a node's daemons, its template and its tasks)."""

from __future__ import annotations

import contextlib
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(signal_number: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``signal_number`` to this process when its parent dies.

    A node's processes must not outlive ``countyfl node start``: a task left running after
    its node was killed would keep the site's key loaded. A no-op outside Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0)
