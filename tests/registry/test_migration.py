"""The hand-written registry migrations (0002 to 0005) create exactly the tables of the ORM."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, text

from countyfl.registry import AuthenticationError, tables
from countyfl.storage import Base

REGISTRY_TABLES = {
    "users",
    "api_tokens",
    "registry_model_versions",
    "registry_version_institutions",
    "registry_stage_transitions",
    "registry_thresholds",
    "registry_evaluations",
    "registry_settings",
}


def _registry_metadata() -> MetaData:
    assert tables.UserRow.__tablename__ == "users"  # the ORM classes are on Base
    metadata = MetaData()
    for name in REGISTRY_TABLES:
        Base.metadata.tables[name].to_metadata(metadata)
    return metadata


def _table_of(item: object) -> str:
    table = getattr(item, "table", None)
    return str(getattr(table if table is not None else item, "name", ""))


def test_migration_matches_the_orm_tables(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, _registry_metadata())
    # Alembic lists tables it does not know as removals; only ours are compared.
    ours = [
        difference
        for difference in differences
        if not (
            isinstance(difference, tuple)
            and difference[0] in {"remove_table", "remove_index"}
            and _table_of(difference[1]) not in REGISTRY_TABLES
        )
    ]
    assert ours == []


def test_partial_unique_index_exists(engine: Engine) -> None:
    indexes = inspect(engine).get_indexes("registry_model_versions")
    one_production = next(
        index for index in indexes if index["name"] == "uq_registry_model_versions_one_production"
    )
    assert one_production["unique"]
    assert one_production["column_names"] == ["name"]


def test_an_old_database_upgrades_with_its_users_approved(tmp_path: Path) -> None:
    """Revision 0004 merges the two heads; users and tokens made before it keep working."""
    from countyfl.audit import AuditLog
    from countyfl.registry import (
        Principal,
        Role,
        add_user,
        authenticate_password,
        authenticate_token,
        create_api_token,
    )
    from countyfl.storage import create_database_engine, upgrade

    engine = create_database_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0003_model_features")
    upgrade(engine, "0002_audit_log")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (username, role, password_hash, disabled, created_at) VALUES "
                "('old-node', 'node', NULL, 0, '2026-01-01 00:00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO api_tokens (name, user_id, token_sha256, created_at, revoked) "
                "SELECT 'old', id, :sha, '2026-01-01 00:00:00', 0 FROM users"
            ),
            {"sha": hashlib.sha256(b"cfl_old-token").hexdigest()},
        )
    upgrade(engine)
    audit = AuditLog(engine)
    assert authenticate_token(engine, "cfl_old-token", audit=audit) == Principal(
        "old-node", Role.NODE
    )
    with engine.connect() as connection:
        key = connection.execute(
            text("SELECT value FROM registry_settings WHERE name = 'audit-pseudonym-key'")
        ).scalar_one()
    assert len(bytes.fromhex(key)) == 32
    # The new rules apply from now on: a privileged account added by one admin waits.
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (username, role, password_hash, disabled, created_at, "
                "token_version, pending_approval) VALUES ('ada', 'admin', NULL, 0, "
                "'2026-01-01 00:00:00', 0, 0)"
            )
        )
    ada = Principal("ada", Role.ADMIN)
    added = add_user(engine, "rita", Role.RESEARCHER, password="x" * 12, principal=ada, audit=audit)
    assert added.pending_approval
    with pytest.raises(AuthenticationError):
        authenticate_password(engine, "rita", "x" * 12, audit=audit)
    assert not create_api_token(
        engine, "ada", name="own", principal=ada, audit=audit
    ).token.pending_approval
    engine.dispose()
