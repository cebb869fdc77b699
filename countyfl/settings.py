"""Service settings, the third configuration source: environment variables prefixed COUNTYFL_."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Where countyfl keeps its embedded state when nothing else is configured."""
    return Path.home() / ".countyfl"


class Settings(BaseSettings):
    """Settings of the registry, the audit log and the API.

    Every field can be set as ``COUNTYFL_<FIELD>`` in the environment, e.g.
    ``COUNTYFL_DATABASE_URL=postgresql+psycopg://user@db/countyfl``.
    """

    model_config = SettingsConfigDict(env_prefix="COUNTYFL_", frozen=True, extra="ignore")

    home: Path = Field(default_factory=default_home, description="Directory of embedded state.")
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL. Empty means SQLite at HOME/countyfl.db (WAL mode).",
    )

    def resolved_database_url(self) -> str:
        """The database URL to use: the configured one, or embedded SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'countyfl.db'}"
