"""Owner-only files and folders: keys, secrets, databases and patient-derived state.

One definition of how countyfl writes a file nobody else may read (created with mode 0600
from the first byte, whatever the umask, never following a symlink), creates a folder only
its owner may enter (0700), tightens an older one, and checks that a secret it is about to
read is not readable by others.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700


def make_private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; existing folders are left alone.

    ``mkdir``'s mode is filtered by the umask, so each folder created here is set exactly.
    """
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIRECTORY_MODE)
        except FileExistsError:
            continue
        folder.chmod(PRIVATE_DIRECTORY_MODE)


def tighten(path: Path, private_mode: int) -> None:
    """Take group and other permissions away from ``path`` if it is ours and has any."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        return
    if stat.S_IMODE(info.st_mode) & (stat.S_IRWXG | stat.S_IRWXO):
        path.chmod(stat.S_IMODE(info.st_mode) & private_mode)
        logger.warning(
            "%s was readable by other users; its mode is now %04o",
            path,
            stat.S_IMODE(info.st_mode) & private_mode,
        )


def ensure_private_directory(path: Path) -> None:
    """``path`` exists as a folder only its owner may enter (created, or tightened to 0700)."""
    make_private_directory(path)
    tighten(path, PRIVATE_DIRECTORY_MODE)


def write_file(
    path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE, replace: bool = False
) -> None:
    """Write ``data`` to ``path`` with exactly ``mode`` (default 0600: owner only), durably.

    Without ``replace`` the file must not exist yet (O_EXCL: never replace a file that
    appeared since a check; FileExistsError otherwise). With it, the data goes to a
    temporary file beside ``path`` that atomically replaces it, so a reader never sees a
    half-written file. Symlinks are never followed; the mode is set whatever the umask.
    """
    target = path.with_name(f".{path.name}.tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    if replace:
        target.unlink(missing_ok=True)
    descriptor = os.open(target, flags, mode)
    try:
        os.fchmod(descriptor, mode)  # the umask may have taken bits away
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if replace:
        os.replace(target, path)


def shared_mode(path: Path) -> int | None:
    """The permission bits of ``path`` if group or others have any, else None.

    For a secret about to be read: a key file others can read may already be compromised.
    Raises OSError if the file cannot be examined.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & (stat.S_IRWXG | stat.S_IRWXO) else None
