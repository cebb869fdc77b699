"""``POST /v1/token``: the OAuth2 password flow, answering a short-lived access token."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from countyfl.registry import (
    AuditSink,
    AuthenticationError,
    Principal,
    authenticate_password,
    pseudonym,
)
from countyfl.registry.principals import UNKNOWN_ROLE, token_version_of
from countyfl.serving.auditing import PurposeSink
from countyfl.serving.auth import issue_access_token
from countyfl.serving.dependencies import TOKEN_URL, State, client_address
from countyfl.serving.errors import (
    FieldProblem,
    InvalidRecordError,
    NotAuthenticatedError,
    TooManyAttemptsError,
)
from countyfl.serving.login_audit import CountingSink
from countyfl.serving.responses import error_responses
from countyfl.serving.schemas import TokenPublic
from countyfl.serving.state import ServingState

router = APIRouter(tags=["authentication"])

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
FORM_FIELDS = ("grant_type", "username", "password", "scope", "client_id", "client_secret")
"""The fields of RFC 6749's password grant (section 4.3); any other field is refused."""
_MAX_FIELDS = len(FORM_FIELDS)
_FORM_SCHEMA = {
    "type": "object",
    "required": ["username", "password"],
    "additionalProperties": False,
    "properties": {
        "grant_type": {"type": "string", "enum": ["password"]},
        "username": {"type": "string", "minLength": 1, "maxLength": 64},
        "password": {"type": "string", "minLength": 1, "maxLength": 1024, "format": "password"},
        "scope": {"type": "string", "maxLength": 256},
        "client_id": {"type": "string", "maxLength": 256},
        "client_secret": {"type": "string", "maxLength": 256, "format": "password"},
    },
}
_LIMITS = {"username": 64, "password": 1024, "scope": 256, "client_id": 256, "client_secret": 256}


@router.post(
    TOKEN_URL,
    response_model=TokenPublic,
    summary="Exchange a user name and password for an access token",
    responses=error_responses(401, 413, 422, 429, 503),
    openapi_extra={
        "requestBody": {"required": True, "content": {FORM_CONTENT_TYPE: {"schema": _FORM_SCHEMA}}}
    },
)
async def issue_token(request: Request, state: State) -> TokenPublic:
    """OAuth2 password grant (RFC 6749, section 4.3): form fields ``username``, ``password``.

    A successful login is audited as ``login`` by the registry; failures are counted and
    audited as a summary per period (never the password, never a user name as typed).
    After 5 failures for an account (30 from one address) further attempts are refused
    with 429 and ``Retry-After`` for a time that doubles with each failure, whether the
    password is right or not. The token is an HS256 JWT valid for the configured lifetime
    (15 minutes by default).
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise InvalidRecordError(
            f"send the credentials as {FORM_CONTENT_TYPE} (username=...&password=...)",
            [FieldProblem("body", "wrong content type", expected=FORM_CONTENT_TYPE)],
        )
    body = await request.body()
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRecordError(
            "the form cannot be read: send UTF-8 username=...&password=... and nothing else",
            [FieldProblem("body", "not a readable form", expected=FORM_CONTENT_TYPE)],
        ) from None
    problems = []
    unknown = sorted(set(form) - set(FORM_FIELDS))
    if unknown:
        # The names are not echoed: they are whatever the client typed.
        problems.append(FieldProblem("body", "unknown form field", expected=", ".join(FORM_FIELDS)))
    values: dict[str, str] = {}
    for name in ("username", "password"):
        given = form.get(name, [])
        if len(given) != 1 or not given[0]:
            problems.append(FieldProblem(name, "required, exactly once", expected="a string"))
        else:
            values[name] = given[0]
    for name, limit in _LIMITS.items():
        given = form.get(name, [])
        if len(given) > 1 or any(len(value) > limit for value in given):
            problems.append(
                FieldProblem(name, "too long or repeated", expected=f"once, at most {limit}")
            )
    grant = form.get("grant_type", ["password"])
    if grant != ["password"]:
        problems.append(FieldProblem("grant_type", "unsupported grant type", expected="'password'"))
    if problems:
        raise InvalidRecordError(
            "the token request needs username and password (grant_type=password) and no "
            "other fields",
            problems,
        )
    address = client_address(request)
    principal, version = await password_login(
        state, address, values["username"], values["password"]
    )
    lifetime = timedelta(minutes=state.settings.token_lifetime_minutes)
    issued = issue_access_token(principal, state.signing_key, lifetime, token_version=version)
    return TokenPublic(
        access_token=issued.token,
        expires_in=issued.lifetime_seconds,
        expires_at=issued.expires_at,
    )


async def password_login(
    state: ServingState,
    address: str,
    username: str,
    password: str,
    *,
    context: Mapping[str, object] | None = None,
) -> tuple[Principal, int]:
    """Check a user name and password under the lockout rules; the user and token version.

    The one password check of the API's token route and the web console's sign-in: the
    same throttle, the same failure counts and the same audit entries (``context`` is added
    to a successful login's entry, e.g. ``{"via": "console"}``).

    Raises
    ------
    TooManyAttemptsError
        If the account or the address is locked out (the password is not even checked).
    NotAuthenticatedError
        If the user name or password is wrong, or the user may not log in.
    """
    wait = state.throttle.retry_after(address=address, account=username)
    if wait > 0:
        state.failed_logins.count(
            address=address,
            account=await run_in_threadpool(lambda: _account_name(state, username)),
            method="password",
            reason="locked-out",
        )
        raise TooManyAttemptsError(wait)
    sink: AuditSink = state.audit if context is None else PurposeSink(state.audit, context)
    counting = CountingSink(sink, state.failed_logins, address)

    def login() -> tuple[Principal, int]:
        version = token_version_of(state.engine, username)
        principal = authenticate_password(state.engine, username, password, audit=counting)
        return principal, version or 0

    try:
        principal, version = await run_in_threadpool(login)
    except AuthenticationError as error:
        locks = state.throttle.failed(address=address, account=username)
        refusal = counting.refusal
        for lock in locks:
            if lock.kind == "account" and refusal is not None and refusal[1] != UNKNOWN_ROLE:
                account, role, seconds = refusal[0], refusal[1], lock.seconds
                await run_in_threadpool(
                    partial(state.failed_logins.locked, account=account, role=role, seconds=seconds)
                )
        raise NotAuthenticatedError(str(error)) from None
    state.throttle.succeeded(account=username)
    return principal, version


def _account_name(state: ServingState, username: str) -> str:
    """How failure counts name ``username``: itself if it is a user, else its pseudonym."""
    if token_version_of(state.engine, username) is not None:
        return username
    return pseudonym(state.engine, username)
