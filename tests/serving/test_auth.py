"""Access tokens are checked strictly; the signing secret is never a default or placeholder."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from countyfl.errors import ConfigError
from countyfl.registry import Principal, Role
from countyfl.serving.auth import (
    AUDIENCE,
    ISSUER,
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
        "jti": "abc",
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, default=lambda d: int(d.timestamp())).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_issued_token_round_trips() -> None:
    token = issue_access_token(CLINICIAN, KEY, timedelta(minutes=15))
    assert read_access_token(token.token, KEY) == CLINICIAN
    assert token.lifetime_seconds == 900
    payload = jwt.decode(token.token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 900
    assert set(payload) == {"sub", "role", "iat", "exp", "iss", "aud", "jti"}


def test_expired_token_is_refused_and_names_its_owner() -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    token = issue_access_token(CLINICIAN, KEY, timedelta(minutes=15), now=long_ago)
    with pytest.raises(TokenRejectedError) as caught:
        read_access_token(token.token, KEY)
    assert caught.value.reason == "expired-token"
    assert caught.value.principal == CLINICIAN


def test_token_of_another_key_is_refused_without_an_owner() -> None:
    token = issue_access_token(CLINICIAN, b"o" * 32, timedelta(minutes=15))
    with pytest.raises(TokenRejectedError) as caught:
        read_access_token(token.token, KEY)
    assert caught.value.principal is None


def test_expired_forgery_is_not_taken_for_its_claimed_owner() -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    forged = issue_access_token(CLINICIAN, b"o" * 32, timedelta(minutes=1), now=long_ago)
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
    header, _, signature = issue_access_token(CLINICIAN, KEY, timedelta(minutes=5)).token.split(".")
    promoted = _b64(claims(role="admin", sub="chen"))
    with pytest.raises(TokenRejectedError):
        read_access_token(f"{header}.{promoted}.{signature}", KEY)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "role", "iss", "aud", "jti"])
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


def test_secret_file_wins_and_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "jwt.key"
    path.write_text("s" * 40 + "\n", encoding="utf-8")
    settings = ServingSettings(jwt_secret_file=path, jwt_secret="e" * 40)
    assert settings.jwt_signing_key() == b"s" * 40


def test_unreadable_secret_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        ServingSettings(jwt_secret_file=tmp_path / "missing.key").jwt_signing_key()


def test_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTYFL_JWT_SECRET", "v" * 33)
    monkeypatch.setenv("COUNTYFL_TOKEN_LIFETIME_MINUTES", "5")
    settings = ServingSettings()
    assert settings.jwt_signing_key() == b"v" * 33
    assert settings.token_lifetime_minutes == 5


def test_test_flag_allows_a_placeholder_or_a_random_secret() -> None:
    assert (
        ServingSettings(jwt_secret="changeme", allow_test_secret=True).jwt_signing_key()
        == b"changeme"
    )
    first = ServingSettings(allow_test_secret=True).jwt_signing_key()
    second = ServingSettings(allow_test_secret=True).jwt_signing_key()
    assert len(first) == 32 and first != second
