"""Opening a database migrates it once; an up-to-date one is opened without Alembic."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from countyfl.storage import database, open_database
from countyfl.storage.database import HEAD_REVISIONS, alembic_config, create_database_engine


def test_the_known_heads_are_alembics_heads(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'x.db'}")
    heads = ScriptDirectory.from_config(alembic_config(engine)).get_heads()
    assert frozenset(heads) == HEAD_REVISIONS, "update HEAD_REVISIONS with the new migration"


def test_a_new_database_is_migrated_and_a_current_one_is_not_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'countyfl.db'}"
    upgrades: list[str] = []
    real = database.upgrade
    monkeypatch.setattr(database, "upgrade", lambda engine: upgrades.append("up") or real(engine))
    first = open_database(url)
    assert database.is_current(first)
    first.dispose()
    open_database(url).dispose()
    assert upgrades == ["up"]
