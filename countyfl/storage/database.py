"""Engine creation (SQLite WAL or PostgreSQL), the declarative base and Alembic upgrades.

A SQLite database holds password hashes, token hashes and the audit log, so its files are
owner-only from the moment they exist: the folders countyfl creates for it are 0700, the
database file is created 0600 before SQLite opens it (SQLite gives ``-wal`` and ``-shm`` the
database file's mode), and files left group- or world-readable by an older version are
tightened when an engine is created and on every new connection.

The registry (``countyfl.registry``) and the audit log (``countyfl.audit``) put their tables
on the one :class:`Base` defined here; their schema changes are Alembic revisions in
``countyfl/storage/migrations/versions`` and are applied with :func:`upgrade`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from countyfl.errors import ConfigError
from countyfl.files import (
    PRIVATE_FILE_MODE,
    make_private_directory,
    tighten,
)

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
"""Files SQLite keeps beside a database; they hold the same data."""


class Base(DeclarativeBase):
    """Declarative base of every countyfl table."""


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside one writer; busy_timeout makes concurrent writers wait
    # instead of failing at once with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _prepare_sqlite_file(database: Path) -> None:
    """Create the folders and an empty database file owner-only; tighten older files."""
    make_private_directory(database.parent)
    try:
        descriptor = os.open(
            database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE
        )
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(descriptor, PRIVATE_FILE_MODE)  # exactly, whatever the umask
        finally:
            os.close(descriptor)
    _tighten_sqlite_files(database)


def _tighten_sqlite_files(database: Path) -> None:
    tighten(database, PRIVATE_FILE_MODE)
    for suffix in SQLITE_COMPANIONS:
        tighten(Path(f"{database}{suffix}"), PRIVATE_FILE_MODE)


def create_database_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL mode and its parent directory created.

    Raises
    ------
    ConfigError
        If the URL cannot be parsed or names an unsupported backend.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse message
        raise ConfigError(
            f"database URL {url!r} cannot be parsed ({exc}); use sqlite:///PATH "
            "or postgresql+psycopg://USER@HOST:PORT/DB"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = None
        if parsed.database and parsed.database != ":memory:":
            database = Path(parsed.database).expanduser()
            try:
                _prepare_sqlite_file(database)
            except OSError as error:
                raise ConfigError(
                    f"the SQLite database {database} cannot be created owner-only ({error}); "
                    "check the folder and its permissions"
                ) from None
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        if database is not None:
            # The -wal and -shm files appear with the first connection; one left readable
            # by an older version is tightened as soon as it is opened again.
            path = database

            def _tighten_on_connect(_connection: Any, _record: Any) -> None:
                _tighten_sqlite_files(path)

            event.listen(engine, "connect", _tighten_on_connect)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    raise ConfigError(
        f"database backend {backend!r} in {url!r} is not supported; use sqlite or postgresql"
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` (objects stay readable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Any:
    """An Alembic ``Config`` pointing at countyfl's migrations and at ``engine``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema of ``engine``'s database up to ``revision`` (all heads by default)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


HEAD_REVISIONS = frozenset({"0005_model_evaluations"})
"""The migrations' head revisions (a test checks this against Alembic's own answer)."""


def is_current(engine: Engine) -> bool:
    """Whether the database already stands at :data:`HEAD_REVISIONS` (read without Alembic).

    Importing Alembic and reading its scripts costs more than most commands do; a command
    on an up-to-date database skips it.
    """
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except SQLAlchemyError:
        return False  # no alembic_version table yet: a new database
    return {row[0] for row in rows} == HEAD_REVISIONS


def open_database(url: str) -> Engine:
    """An engine on ``url`` whose schema is brought up to date: how every entry point opens it.

    Statement parameters are hidden from error messages, so a failing statement never
    prints a password hash or a token hash in a traceback.
    """
    engine = create_database_engine(url, hide_parameters=True)
    try:
        if not is_current(engine):
            upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


API_ROLE_SQL = Path(__file__).parent / "api_role.sql"
_IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"


def api_role_statements(role: str, schema: str = "public") -> list[str]:
    """The GRANT statements of the API's least-privilege PostgreSQL role (``api_role.sql``).

    Raises
    ------
    ConfigError
        If ``role`` or ``schema`` is not a plain lowercase SQL identifier.
    """
    import re

    for kind, name in (("role", role), ("schema", schema)):
        if not re.fullmatch(_IDENTIFIER, name):
            raise ConfigError(
                f"{kind} name {name!r} is not a plain SQL identifier; use lowercase letters, "
                "digits and '_'"
            )
    text = API_ROLE_SQL.read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [
        " ".join(statement.split()).replace("{role}", role).replace("{schema}", schema)
        for statement in code.split(";")
        if statement.strip()
    ]


def fetch_row(engine: Engine, sql: str, parameters: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The first row of a fixed query, through a pooled DB-API connection (``?`` marks).

    For the two lookups the API makes on every request (the caller's user, the production
    version): a SQLAlchemy Connection costs several times the indexed query itself. A
    driver error is raised as SQLAlchemy's ``DBAPIError`` (parameters hidden), so callers
    handle it like any database error.
    """
    from sqlalchemy.exc import DBAPIError

    if engine.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(sql, parameters)
            row = cursor.fetchone()
        finally:
            cursor.close()
    except dbapi_error as error:
        raise DBAPIError.instance(
            sql, parameters, error, dbapi_error, hide_parameters=True
        ) from None
    finally:
        connection.close()
    return None if row is None else tuple(row)
