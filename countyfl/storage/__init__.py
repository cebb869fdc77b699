"""Shared relational storage of the registry and the audit log: engine, ORM base, migrations."""

from countyfl.storage.database import Base, create_database_engine, session_factory, upgrade

__all__ = ["Base", "create_database_engine", "session_factory", "upgrade"]
