"""The hand-written registry migrations (0002 to 0005) create exactly the tables of the ORM."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect

from countyfl.registry import tables
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
