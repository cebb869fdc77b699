"""Access tokens: short-lived HS256 JWTs issued for a password, checked strictly.

A token carries ``sub`` (user), ``role``, ``ver`` (the user's token version), ``iat``,
``exp``, ``iss``, ``aud`` and ``jti``; every one is required. Only HS256 is accepted, so
``alg: none``, another algorithm and a token signed with another key are all refused, as
are expired tokens (no leeway). A signature only proves the token was issued; on every
request the API also checks the user in the registry (:func:`countyfl.serving.dependencies.
get_principal`): it must exist, be enabled and approved, still have the token's role, and
still have the token's version. Disabling a user, changing its role or its password
increments the version, so its tokens stop working at once. Systems use API tokens
(``cfl_...``) instead, which the registry checks on every request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from countyfl.registry import Principal, Role
from countyfl.serving.errors import NotAuthenticatedError

ALGORITHM = "HS256"
ISSUER = "countyfl"
AUDIENCE = "countyfl-api"
REQUIRED_CLAIMS = ("exp", "iat", "sub", "role", "ver", "iss", "aud", "jti")
REJECTED = (
    "the access token was not accepted (expired, malformed or not signed by this service); "
    "get a new one from POST /v1/token"
)


@dataclass(frozen=True)
class AccessClaims:
    """What a correctly signed, unexpired access token says: who, and its token version."""

    principal: Principal
    token_version: int


@dataclass(frozen=True)
class AccessToken:
    """A signed token and when it expires."""

    token: str
    expires_at: datetime
    lifetime_seconds: int


class TokenRejectedError(NotAuthenticatedError):
    """An access token that proves nothing; ``principal`` is set when it is known.

    The principal is known only for a correctly signed token that has expired: its claims
    can be trusted to say whose it was, so the refusal can be audited under that name.
    """

    def __init__(self, reason: str, principal: Principal | None = None) -> None:
        super().__init__(REJECTED)
        self.reason = reason
        self.principal = principal


def issue_access_token(
    principal: Principal,
    key: bytes,
    lifetime: timedelta,
    *,
    token_version: int,
    now: datetime | None = None,
) -> AccessToken:
    """Sign an access token for ``principal`` (at ``token_version``) valid for ``lifetime``."""
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    expires = issued + lifetime
    claims = {
        "sub": principal.username,
        "role": principal.role.value,
        "ver": token_version,
        "iat": issued,
        "exp": expires,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM)
    return AccessToken(token, expires, int(lifetime.total_seconds()))


def read_access_token(token: str, key: bytes) -> AccessClaims:
    """The principal and token version of a correctly signed, unexpired access token.

    Raises
    ------
    TokenRejectedError
        If the token is expired, not yet valid, not HS256, signed with another key,
        malformed, misses a claim or names an unknown role. ``reason`` says which (for the
        audit log; the message is the same for every cause).
    """
    try:
        claims = _decode(token, key, verify_exp=True)
    except jwt.ExpiredSignatureError:
        try:
            claims = _decode(token, key, verify_exp=False)
        except jwt.PyJWTError:
            raise TokenRejectedError("invalid-token") from None
        principal = _principal(claims)
        raise TokenRejectedError("expired-token", principal) from None
    except jwt.PyJWTError:
        raise TokenRejectedError("invalid-token") from None
    principal = _principal(claims)
    version = claims.get("ver")
    if principal is None or not isinstance(version, int) or isinstance(version, bool):
        raise TokenRejectedError("invalid-claims")
    return AccessClaims(principal, version)


def _decode(token: str, key: bytes, *, verify_exp: bool) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        token,
        key,
        algorithms=[ALGORITHM],
        audience=AUDIENCE,
        issuer=ISSUER,
        leeway=0,
        options={"require": list(REQUIRED_CLAIMS), "verify_exp": verify_exp},
    )
    return claims


def _principal(claims: dict[str, object]) -> Principal | None:
    username, role = claims.get("sub"), claims.get("role")
    if not isinstance(username, str) or not isinstance(role, str):
        return None
    try:
        return Principal(username, Role(role))
    except ValueError:
        return None
