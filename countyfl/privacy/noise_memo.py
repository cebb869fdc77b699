"""A site's calibrated noise multipliers, kept across the processes of its node.

Calibrating DP-SGD's noise to a run's target epsilon (:func:`~countyfl.privacy.accounting.
noise_multiplier_for`) asks the accountant for an epsilon a dozen times: seconds of CPU
with the PRV accountant. Its result depends only on public task parameters (target
epsilon, delta, sample rate, steps, accountant, the run's other mechanisms), so a process
that trains every round memoizes it (:func:`countyfl.privacy.budget.calibrated_noise`).
A deployed node answers every message in a new process, which never sees that memo, and
paid the calibration again every round (most of a deployment round's CPU, profiled in
docs/deployment.md). This memo keeps each result in the site's state folder instead:

- one JSON file per parameter set, named by the sha256 of the parameters and holding
  them, so a file is used only for exactly those parameters; a file that does not read
  back as a positive finite number for them counts as a miss;
- the folder is 0700 and every file 0600 (``countyfl.files``), written atomically; at
  most :data:`MAX_ENTRIES` files are kept (the oldest go).

It holds no data and no secret: a value is what any process computes from the same
parameters. It is trusted like the privacy ledger beside it (whoever can write the state
folder can rewrite the ledger too); the ledger still records the epsilon of the noise
really used, and the budget check refuses a round beyond the budget whatever the memo says.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from countyfl.files import ensure_private_directory, write_file

MEMO_DIR = "noise-calibration"
MAX_ENTRIES = 256
MAX_RECORD_BYTES = 65536


def memo_folder(state_dir: Path) -> Path:
    """Where a site's node keeps calibrated noise multipliers."""
    return state_dir / MEMO_DIR


def _key(parameters: Sequence[Any]) -> str:
    return json.dumps(list(parameters), separators=(",", ":"))


class NoiseMemo:
    """Noise multipliers calibrated at one site, keyed by their parameters."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = memo_folder(state_dir)

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _read(self, parameters: Sequence[Any]) -> dict[str, Any] | None:
        """The record stored for exactly these parameters, or None."""
        key = _key(parameters)
        try:
            descriptor = os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            with os.fdopen(descriptor, "rb") as handle:
                stored = json.loads(handle.read(MAX_RECORD_BYTES))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("parameters") != json.loads(key):
            return None
        return stored

    def _write(self, parameters: Sequence[Any], name: str, value: Any) -> None:
        """Store a result (a memo: a write that fails is only a miss next time)."""
        key = _key(parameters)
        record = {"parameters": json.loads(key), name: value}
        try:
            ensure_private_directory(self.folder)
            write_file(self._path(key), json.dumps(record).encode(), replace=True)
            self._prune()
        except OSError:
            return

    def get(self, parameters: Sequence[Any]) -> float | None:
        """The noise multiplier stored for exactly these parameters, or None."""
        stored = self._read(parameters)
        value = None if stored is None else stored.get("noise_multiplier")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value) or value <= 0:
            return None
        return float(value)

    def put(self, parameters: Sequence[Any], noise_multiplier: float) -> None:
        """Store a calibrated noise multiplier."""
        self._write(parameters, "noise_multiplier", float(noise_multiplier))

    def _prune(self) -> None:
        entries = []
        for path in self.folder.glob("*.json"):
            try:
                entries.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        for _, path in sorted(entries)[: max(0, len(entries) - MAX_ENTRIES)]:
            path.unlink(missing_ok=True)

    def calibrate(self, parameters: Sequence[Any], compute: Callable[[], float]) -> float:
        """The stored result for ``parameters``, else ``compute()`` stored."""
        value = self.get(parameters)
        if value is None:
            value = compute()
            self.put(parameters, value)
        return value


class RdpVectorMemo(NoiseMemo):
    """One-step RDP vectors of (noise multiplier, sample rate), kept beside the noise memo.

    The accountant's bounds (:func:`countyfl.privacy.accounting.keep_rdp_vectors_in`) need
    each mechanism's RDP at every order; a deployed site's every training task needed the
    same few vectors again. A vector is a list of non-negative numbers (``Infinity`` where
    an order's bound is infinite) of the stored length, else a miss.
    """

    def get(self, parameters: Sequence[Any]) -> list[float] | None:  # type: ignore[override]
        stored = self._read(parameters)
        values = None if stored is None else stored.get("rdp")
        if not isinstance(values, list):
            return None
        vector: list[float] = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            if math.isnan(value) or value < 0:
                return None
            vector.append(float(value))
        return vector

    def put(self, parameters: Sequence[Any], values: Sequence[float]) -> None:  # type: ignore[override]
        self._write(parameters, "rdp", [float(v) for v in values])
