"""Shared relational storage of the registry and the audit log: engine, ORM base, migrations."""

from countyfl.storage.database import (
    Base,
    api_role_statements,
    create_database_engine,
    open_database,
    session_factory,
    upgrade,
)

__all__ = [
    "Base",
    "api_role_statements",
    "create_database_engine",
    "open_database",
    "session_factory",
    "upgrade",
]
