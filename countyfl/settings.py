"""Service settings, the third configuration source: environment variables prefixed COUNTYFL_."""

from __future__ import annotations

import math
import os
from collections import Counter
from itertools import pairwise
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from countyfl.errors import ConfigError
from countyfl.files import shared_mode


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
        from countyfl.files import ensure_private_directory

        ensure_private_directory(self.home)
        return f"sqlite:///{self.home / 'countyfl.db'}"


PLACEHOLDER_WORDS = (
    "changeme",
    "change-me",
    "change_me",
    "placeholder",
    "secret",
    "password",
    "passw0rd",
    "example",
    "default",
    "letmein",
    "qwerty",
)
"""Text that marks a secret as a placeholder wherever it appears in it (case-insensitive)."""
MIN_SECRET_BYTES = 32
"""HS256 needs a key of at least 256 bits (RFC 7518, section 3.2)."""
MIN_SECRET_ENTROPY_BITS = 80
"""What a secret's characters must carry at least, estimated from their frequencies (32
random hex digits, 128 random bits, estimate at least 88 in 200,000 draws)."""
REMOVED_TEST_SWITCH = "COUNTYFL_ALLOW_TEST_SECRET"


def secret_weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak to sign access tokens, or None if it looks random enough.

    A secret is refused if it is shorter than :data:`MIN_SECRET_BYTES` bytes, contains a
    placeholder word (:data:`PLACEHOLDER_WORDS`), repeats a shorter pattern ("aaaa...",
    "changemechangeme..."), runs through a sequence ("abcdef...", "123456..."), or its
    characters carry less than :data:`MIN_SECRET_ENTROPY_BITS` bits by their empirical
    (Shannon) entropy. Random secrets (``secrets.token_urlsafe(32)``, 32 bytes of
    ``/dev/urandom`` in base64 or hex) pass with a wide margin; the estimate cannot prove a
    secret random, only catch the ones that are not.
    """
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return f"has {size} bytes; HS256 needs at least {MIN_SECRET_BYTES} random bytes"
    lowered = secret.lower()
    for word in PLACEHOLDER_WORDS:
        if word in lowered:
            return f"contains the placeholder {word!r}"
    for period in range(1, len(secret) // 2 + 1):
        if all(secret[i] == secret[i % period] for i in range(len(secret))):
            return f"repeats a pattern of {period} character{'s' if period > 1 else ''}"
    steps = sum(1 for a, b in pairwise(secret) if abs(ord(a) - ord(b)) == 1)
    if steps > (len(secret) - 1) // 2:
        return "runs through a sequence of neighbouring characters"
    counts = Counter(secret)
    entropy = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    if entropy * len(secret) < MIN_SECRET_ENTROPY_BITS:
        return (
            f"carries about {entropy * len(secret):.0f} bits by its characters' frequencies; "
            f"a random secret carries at least {MIN_SECRET_ENTROPY_BITS}"
        )
    return None


class ServingSettings(Settings):
    """Settings of the clinician API (``countyfl serve``), beside the registry's.

    Every field is also ``COUNTYFL_<FIELD>`` in the environment, e.g.
    ``COUNTYFL_JWT_SECRET_FILE=/etc/countyfl/jwt.key`` or ``COUNTYFL_MAX_BATCH_SIZE=32``.
    The JWT signing secret comes from a file readable by its owner only (preferred) or the
    environment, never from a default: :meth:`jwt_signing_key` refuses a missing, short,
    placeholder or low-entropy secret, and a key file other users could read. There is no
    test mode: tests pass a random secret like everybody else.
    """

    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 signing secret of access tokens (prefer the file)."
    )
    jwt_secret_file: Path | None = Field(
        default=None,
        description="Owner-only file holding the signing secret (surrounding blanks ignored).",
    )
    token_lifetime_minutes: int = Field(
        default=15, ge=1, le=24 * 60, description="Lifetime of an access token."
    )
    console_idle_minutes: int = Field(
        default=15, ge=1, le=24 * 60, description="Web console: sign out after this idle time."
    )
    console_runs_dir: Path | None = Field(
        default=None,
        description="Web console: the folder of the county node's run folders (one per run).",
    )
    max_request_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request body; larger ones get 413.",
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
    login_free_failures: int = Field(
        default=5,
        ge=1,
        le=100,
        description="The failed password login of one account that locks it out for a while.",
    )
    address_free_failures: int = Field(
        default=30,
        ge=1,
        le=10_000,
        description="The failed authentication from one address that locks its password logins.",
    )
    lockout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="First lockout; each further failure while throttled doubles it.",
    )
    max_lockout_seconds: float = Field(
        default=900.0, gt=0, le=86_400, description="The longest lockout."
    )
    failed_login_summary_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Failed authentications are audited as one summary entry per this period.",
    )
    audit_signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 key that signs audit checkpoints automatically "
        "[default: HOME/keys/audit-signing.key if it exists].",
    )
    audit_checkpoint_entries: int = Field(
        default=1000, ge=1, le=10_000_000, description="Sign a checkpoint every this many entries."
    )
    audit_checkpoint_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="... or this long after the last one, if entries were added meanwhile.",
    )

    def jwt_signing_key(self) -> bytes:
        """The secret that signs and checks access tokens.

        Raises
        ------
        ConfigError
            If no secret is configured, the file cannot be read or other users may read it,
            or the secret is weak (:func:`secret_weakness`), or the removed test switch
            ``COUNTYFL_ALLOW_TEST_SECRET`` is set.
        """
        if os.environ.get(REMOVED_TEST_SWITCH) is not None:
            raise ConfigError(
                f"{REMOVED_TEST_SWITCH} is set, but countyfl has no test mode any more: a "
                "service always needs a strong secret. Unset it and set "
                "COUNTYFL_JWT_SECRET_FILE to a file with a random secret"
            )
        if self.jwt_secret_file is not None:
            secret = _read_secret_file(self.jwt_secret_file)
            where = f"the file {self.jwt_secret_file}"
        elif self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value().strip()
            where = "COUNTYFL_JWT_SECRET"
        else:
            raise ConfigError(
                "no JWT signing secret is configured; write one to a file readable only by the "
                "service (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))' > "
                "jwt.key && chmod 600 jwt.key`) and set COUNTYFL_JWT_SECRET_FILE to it"
            )
        weakness = secret_weakness(secret)
        if weakness is not None:
            raise ConfigError(
                f"the JWT signing secret in {where} {weakness}; replace it with a random secret "
                "of at least 32 bytes (`python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'`)"
            )
        return secret.encode("utf-8")


def _read_secret_file(path: Path) -> str:
    try:
        shared = shared_mode(path)
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"the JWT secret file {path} cannot be read ({error}); check "
            "COUNTYFL_JWT_SECRET_FILE and the file's permissions"
        ) from None
    if shared is not None:
        raise ConfigError(
            f"the JWT secret file {path} is accessible to other users (mode "
            f"{shared:04o}); run 'chmod 600 {path}', and replace the "
            "secret if others could have read it"
        )
    return secret
