"""Access tokens are checked strictly; the signing secret is never a default or placeholder."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from countyfl.errors import ConfigError
from countyfl.registry import Principal, Role
from countyfl.serving.auth import (
    AUDIENCE,
    ISSUER,
    AccessClaims,
    TokenRejectedError,
    issue_access_token,
    read_access_token,
)
from countyfl.settings import ServingSettings

KEY = b"k" * 64
CLINICIAN = Principal("chen", Role.CLINICIAN)


def claims(**overrides: object) -> dict[str, object]:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "sub": "chen",
        "role": "clinician",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "ver": 0,
        "jti": "abc",
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, default=lambda d: int(d.timestamp())).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_issued_token_round_trips() -> None:
    token = issue_access_token(CLINICIAN, KEY, timedelta(minutes=15), token_version=0)
    assert read_access_token(token.token, KEY) == AccessClaims(CLINICIAN, 0)
    assert token.lifetime_seconds == 900
    payload = jwt.decode(token.token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 900
    assert set(payload) == {"sub", "role", "ver", "iat", "exp", "iss", "aud", "jti"}


def test_expired_token_is_refused_and_names_its_owner() -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    token = issue_access_token(CLINICIAN, KEY, timedelta(minutes=15), token_version=0, now=long_ago)
    with pytest.raises(TokenRejectedError) as caught:
        read_access_token(token.token, KEY)
    assert caught.value.reason == "expired-token"
    assert caught.value.principal == CLINICIAN


def test_token_of_another_key_is_refused_without_an_owner() -> None:
    token = issue_access_token(CLINICIAN, b"o" * 32, timedelta(minutes=15), token_version=0)
    with pytest.raises(TokenRejectedError) as caught:
        read_access_token(token.token, KEY)
    assert caught.value.principal is None


def test_expired_forgery_is_not_taken_for_its_claimed_owner() -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    forged = issue_access_token(
        CLINICIAN, b"o" * 32, timedelta(minutes=1), token_version=0, now=long_ago
    )
    with pytest.raises(TokenRejectedError) as caught:
        read_access_token(forged.token, KEY)
    assert caught.value.principal is None


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_algorithms_are_refused(algorithm: str) -> None:
    token = jwt.encode(claims(), KEY, algorithm=algorithm)
    with pytest.raises(TokenRejectedError):
        read_access_token(token, KEY)


def test_alg_none_is_refused() -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims())}."
    with pytest.raises(TokenRejectedError):
        read_access_token(token, KEY)


def test_payload_changed_after_signing_is_refused() -> None:
    header, _, signature = issue_access_token(
        CLINICIAN, KEY, timedelta(minutes=5), token_version=0
    ).token.split(".")
    promoted = _b64(claims(role="admin", sub="chen"))
    with pytest.raises(TokenRejectedError):
        read_access_token(f"{header}.{promoted}.{signature}", KEY)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "role", "ver", "iss", "aud", "jti"])
def test_every_claim_is_required(missing: str) -> None:
    token = jwt.encode(claims(**{missing: None}), KEY, algorithm="HS256")
    with pytest.raises(TokenRejectedError):
        read_access_token(token, KEY)


@pytest.mark.parametrize(("claim", "value"), [("aud", "other"), ("iss", "other"), ("role", "king")])
def test_wrong_audience_issuer_or_role_is_refused(claim: str, value: str) -> None:
    token = jwt.encode(claims(**{claim: value}), KEY, algorithm="HS256")
    with pytest.raises(TokenRejectedError):
        read_access_token(token, KEY)


def test_token_issued_in_the_future_is_refused() -> None:
    later = datetime.now(UTC) + timedelta(minutes=10)
    token = jwt.encode(claims(iat=later, exp=later + timedelta(minutes=5)), KEY, algorithm="HS256")
    with pytest.raises(TokenRejectedError):
        read_access_token(token, KEY)


def test_garbage_is_refused() -> None:
    for token in ("", "a.b.c", "not-a-token", "...."):
        with pytest.raises(TokenRejectedError):
            read_access_token(token, KEY)


# -- the signing secret ------------------------------------------------------------------


def test_missing_secret_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="no JWT signing secret"):
        ServingSettings().jwt_signing_key()


@pytest.mark.parametrize("secret", ["changeme", "secret", "CHANGE-ME", "short-but-random-1"])
def test_placeholder_or_short_secret_refuses_to_start(secret: str) -> None:
    with pytest.raises(ConfigError, match=r"placeholder|bytes"):
        ServingSettings(jwt_secret=secret).jwt_signing_key()


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("a" * 32, "repeats a pattern of 1 character"),
        ("changemechangemechangemechangeme", "placeholder 'changeme'"),
        ("0123456789abcdefghijklmnopqrstuvwxyz", "sequence"),
        ("ab" * 24, "repeats a pattern of 2 characters"),
        ("aabbaabbaabbbaaabaaaababbbbbbabaaababbbb", "bits by its characters"),
        ("my-Production-SECRET-2026-county-hospital", "placeholder 'secret'"),
    ],
)
def test_weak_secret_refuses_to_start(secret: str, why: str) -> None:
    """Finding 7: 32 times "a" and "changemechangeme..." started the server."""
    with pytest.raises(ConfigError, match=why):
        ServingSettings(jwt_secret=secret).jwt_signing_key()


def test_random_secrets_start() -> None:
    for secret in (
        secrets.token_urlsafe(32),
        secrets.token_hex(32),
        base64.b64encode(secrets.token_bytes(48)).decode(),
    ):
        assert ServingSettings(jwt_secret=secret).jwt_signing_key() == secret.encode()


def private_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_secret_file_wins_and_is_stripped(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(40)
    path = private_file(tmp_path / "jwt.key", secret + "\n")
    settings = ServingSettings(jwt_secret_file=path, jwt_secret=secrets.token_urlsafe(40))
    assert settings.jwt_signing_key() == secret.encode()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_file_other_users_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    """Finding 7: a key file with mode 0644 was accepted."""
    path = private_file(tmp_path / "jwt.key", secrets.token_urlsafe(40))
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"accessible to other users \\(mode {mode:04o}\\)"):
        ServingSettings(jwt_secret_file=path).jwt_signing_key()


def test_unreadable_secret_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        ServingSettings(jwt_secret_file=tmp_path / "missing.key").jwt_signing_key()


def test_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_urlsafe(33)
    monkeypatch.setenv("COUNTYFL_JWT_SECRET", secret)
    monkeypatch.setenv("COUNTYFL_TOKEN_LIFETIME_MINUTES", "5")
    settings = ServingSettings()
    assert settings.jwt_signing_key() == secret.encode()
    assert settings.token_lifetime_minutes == 5


@pytest.mark.parametrize("secret", ["x", None])
def test_the_old_test_switch_is_refused_loudly(
    monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    """Finding 7: COUNTYFL_ALLOW_TEST_SECRET=1 with a one-byte secret started silently."""
    monkeypatch.setenv("COUNTYFL_ALLOW_TEST_SECRET", "1")
    if secret is not None:
        monkeypatch.setenv("COUNTYFL_JWT_SECRET", secret)
    with pytest.raises(
        ConfigError, match="COUNTYFL_ALLOW_TEST_SECRET is set, but countyfl has no test mode"
    ):
        ServingSettings().jwt_signing_key()
    assert "allow_test_secret" not in ServingSettings.model_fields
