"""SQLite database files and folders are owner-only, from the moment they are created."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from countyfl.settings import Settings
from countyfl.storage import create_database_engine, upgrade


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> object:
    """The common default umask 022: files are created 0644 and folders 0755 unless asked."""
    saved = os.umask(0o022)
    yield saved
    os.umask(saved)


def test_new_database_file_wal_shm_and_folder_are_owner_only(
    tmp_path: Path, loose_umask: object
) -> None:
    database = tmp_path / "new-home" / "state" / "countyfl.db"
    engine = create_database_engine(f"sqlite:///{database}")
    try:
        upgrade(engine)
        with engine.begin() as connection:  # something in the WAL
            connection.execute(text("SELECT count(*) FROM users")).scalar()
        with engine.connect() as connection:
            wal = Path(f"{database}-wal")
            shm = Path(f"{database}-shm")
            assert wal.exists() and shm.exists()
            assert (mode(database), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert mode(database.parent) == 0o700
    assert mode(database.parent.parent) == 0o700


def test_database_files_left_readable_by_an_older_version_are_tightened(
    tmp_path: Path, loose_umask: object
) -> None:
    database = tmp_path / "countyfl.db"
    engine = create_database_engine(f"sqlite:///{database}")
    upgrade(engine)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            path.chmod(0o644)
    engine.dispose()
    again = create_database_engine(f"sqlite:///{database}")
    try:
        with again.connect() as connection:
            connection.execute(text("SELECT count(*) FROM users")).scalar()
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
                assert mode(path) == 0o600, path
    finally:
        again.dispose()


def test_default_home_is_created_owner_only_and_tightened(
    tmp_path: Path, loose_umask: object
) -> None:
    home = tmp_path / "home" / ".countyfl"
    url = Settings(home=home).resolved_database_url()
    assert mode(home) == 0o700
    home.chmod(0o755)
    assert Settings(home=home).resolved_database_url() == url
    assert mode(home) == 0o700
