"""Service settings, the third configuration source: environment variables prefixed COUNTYFL_."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from countyfl.errors import ConfigError


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
        """The database URL to use: the configured one, or embedded SQLite under ``home``.

        For the embedded default, ``home`` is created owner-only (0700), or tightened to it
        when an older version left it open to other users: it holds the database and keys.
        """
        if self.database_url:
            return self.database_url
        from countyfl.storage.database import ensure_private_directory

        ensure_private_directory(self.home)
        return f"sqlite:///{self.home / 'countyfl.db'}"


PLACEHOLDER_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "placeholder",
        "secret",
        "password",
        "default",
        "example",
        "test",
        "dev",
        "jwt-secret",
        "your-secret-here",
        "please-change-me",
    }
)
"""Secrets that are placeholders: refused outside a test, whatever their length."""
MIN_SECRET_BYTES = 32
"""HS256 needs a key of at least 256 bits (RFC 7518, section 3.2)."""


class ServingSettings(Settings):
    """Settings of the clinician API (``countyfl serve``), beside the registry's.

    Every field is also ``COUNTYFL_<FIELD>`` in the environment, e.g.
    ``COUNTYFL_JWT_SECRET_FILE=/etc/countyfl/jwt.key`` or ``COUNTYFL_MAX_BATCH_SIZE=32``.
    The JWT signing secret comes from a file (preferred) or the environment, never from a
    default: :meth:`jwt_signing_key` refuses a missing, short or placeholder secret unless
    ``allow_test_secret`` is set, which only tests and local demos may do.
    """

    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 signing secret of access tokens (prefer the file)."
    )
    jwt_secret_file: Path | None = Field(
        default=None, description="File holding the signing secret (surrounding blanks ignored)."
    )
    allow_test_secret: bool = Field(
        default=False,
        description="Tests only: accept a placeholder secret, or make a random one per process.",
    )
    token_lifetime_minutes: int = Field(
        default=15, ge=1, le=24 * 60, description="Lifetime of an access token."
    )
    max_request_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest request body; larger ones get 413."
    )
    max_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="Most patients in one prediction request."
    )
    referral_rules_file: Path | None = Field(
        default=None,
        description="TOML referral rules and risk bands; the packaged defaults when unset.",
    )
    doctor_directory_file: Path | None = Field(
        default=None,
        description="TOML directory of institutions and doctors; the packaged example if unset.",
    )

    def jwt_signing_key(self) -> bytes:
        """The secret that signs and checks access tokens.

        Raises
        ------
        ConfigError
            If no secret is configured, the file cannot be read, or the secret is a
            placeholder or shorter than :data:`MIN_SECRET_BYTES` (unless
            ``allow_test_secret``; then a missing secret becomes a random one that lasts as
            long as the process).
        """
        if self.jwt_secret_file is not None:
            try:
                secret = self.jwt_secret_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(
                    f"the JWT secret file {self.jwt_secret_file} cannot be read ({error}); "
                    "check COUNTYFL_JWT_SECRET_FILE and the file's permissions"
                ) from None
            where = f"the file {self.jwt_secret_file}"
        elif self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value().strip()
            where = "COUNTYFL_JWT_SECRET"
        else:
            if self.allow_test_secret:
                return secrets.token_bytes(MIN_SECRET_BYTES)
            raise ConfigError(
                "no JWT signing secret is configured; write one to a file readable only by the "
                "service (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))' > "
                "jwt.key`) and set COUNTYFL_JWT_SECRET_FILE to it"
            )
        key = secret.encode("utf-8")
        if self.allow_test_secret:
            return key or secrets.token_bytes(MIN_SECRET_BYTES)
        if secret.lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"the JWT signing secret in {where} is a placeholder; replace it with a random "
                f"secret of at least {MIN_SECRET_BYTES} bytes"
            )
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"the JWT signing secret in {where} has {len(key)} bytes; HS256 needs at least "
                f"{MIN_SECRET_BYTES} random bytes"
            )
        return key
