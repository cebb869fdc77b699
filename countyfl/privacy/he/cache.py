"""A site's decrypted aggregates, shared by the processes of its node (owner-only files).

Every institution receives each round's aggregate Enc(sum n w) twice: to evaluate it, then
to train from it in the next round. A deployed node answers every message in a new
process, so the in-process memo of :func:`countyfl.privacy.he.codec.decrypt_average`
never sees the second one: this cache keeps the decrypted average in the site's state
folder, so that an aggregate is decrypted once per site and round.

- The file name and the file itself carry the sha256 of every byte and field of the
  ciphertext (the codec's digest), and a cached average is used only for exactly that
  ciphertext; a file that does not read back as what was stored counts as a miss.
- The folder is 0700 and every file 0600 (``countyfl.files``), written atomically.
- One file per run: storing a round's average removes the run's earlier ones; the
  ClientApp clears the run's files after its last round, ``countyfl node start`` clears
  the folder when it starts and when it stops, and files of runs untouched for
  :data:`STALE_SECONDS` (a run stopped early) go when another average is stored.

What is kept is the global model every institution of the run decrypts anyway; it never
leaves the site's state folder.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np

from countyfl.files import ensure_private_directory, write_file

CACHE_DIR = "ckks-decrypted"
STALE_SECONDS = 3600.0
_MAGIC = b"countyfl-decrypted-v1\n"


def cache_folder(state_dir: Path) -> Path:
    """Where a site's node keeps decrypted aggregates."""
    return state_dir / CACHE_DIR


def clear(state_dir: Path) -> None:
    """Remove every cached average of the site (node start and stop)."""
    shutil.rmtree(cache_folder(state_dir), ignore_errors=True)


class DecryptionCache:
    """Decrypted averages of one run at one site, keyed by the ciphertext's digest."""

    def __init__(self, state_dir: Path, run_id: int | str) -> None:
        self.folder = cache_folder(state_dir)
        self.run = str(int(run_id))  # Flower run ids are integers; nothing else in a name

    def _path(self, digest: bytes) -> Path:
        return self.folder / f"{self.run}-{digest.hex()}.npy"

    def get(self, digest: bytes, num_values: int) -> np.ndarray | None:
        """The average stored for this ciphertext digest, or None."""
        path = self._path(digest)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(descriptor, "rb") as handle:
            data = handle.read()
        header = _MAGIC + digest
        if not data.startswith(header):
            return None
        try:
            average: np.ndarray = np.load(io.BytesIO(data[len(header) :]), allow_pickle=False)
        except (ValueError, OSError):
            return None
        if average.dtype != np.float64 or average.shape != (num_values,):
            return None
        return average

    def put(self, digest: bytes, average: np.ndarray) -> None:
        """Store this ciphertext's average; the run's earlier ones and stale runs' go."""
        ensure_private_directory(self.folder)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(average, dtype=np.float64), allow_pickle=False)
        path = self._path(digest)
        write_file(path, _MAGIC + digest + buffer.getvalue(), replace=True)
        now = time.time()
        for other in self.folder.glob("*.npy"):
            if other == path:
                continue
            try:
                stale = now - other.stat().st_mtime > STALE_SECONDS
            except FileNotFoundError:
                continue
            if other.name.startswith(f"{self.run}-") or stale:
                other.unlink(missing_ok=True)

    def clear_run(self) -> None:
        """Remove this run's files (after its last round)."""
        for path in self.folder.glob(f"{self.run}-*.npy"):
            path.unlink(missing_ok=True)
