"""``POST /v1/token``: the OAuth2 password flow, answering a short-lived access token."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from countyfl.registry import AuthenticationError, authenticate_password
from countyfl.serving.auth import issue_access_token
from countyfl.serving.dependencies import TOKEN_URL, State
from countyfl.serving.errors import FieldProblem, InvalidRecordError, NotAuthenticatedError
from countyfl.serving.schemas import ErrorPublic, TokenPublic

router = APIRouter(tags=["authentication"])

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_MAX_FIELDS = 10
_FORM_SCHEMA = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["password"]},
        "username": {"type": "string", "minLength": 1, "maxLength": 64},
        "password": {"type": "string", "minLength": 1, "maxLength": 1024, "format": "password"},
        "scope": {"type": "string"},
    },
}


@router.post(
    TOKEN_URL,
    response_model=TokenPublic,
    summary="Exchange a user name and password for an access token",
    responses={
        401: {"model": ErrorPublic},
        413: {"model": ErrorPublic},
        422: {"model": ErrorPublic},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {FORM_CONTENT_TYPE: {"schema": _FORM_SCHEMA}}}
    },
)
async def issue_token(request: Request, state: State) -> TokenPublic:
    """OAuth2 password grant (RFC 6749, section 4.3): form fields ``username``, ``password``.

    Every attempt is audited as ``login`` by the registry (never the password). The token
    is an HS256 JWT valid for the configured lifetime (15 minutes by default).
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
    values: dict[str, str] = {}
    for name in ("username", "password"):
        given = form.get(name, [])
        if len(given) != 1 or not given[0]:
            problems.append(FieldProblem(name, "required, exactly once", expected="a string"))
        else:
            values[name] = given[0]
    grant = form.get("grant_type", ["password"])
    if grant != ["password"]:
        problems.append(FieldProblem("grant_type", "unsupported grant type", expected="'password'"))
    if problems:
        raise InvalidRecordError(
            "the token request needs username and password (grant_type=password)", problems
        )
    try:
        principal = await run_in_threadpool(
            lambda: authenticate_password(
                state.engine, values["username"], values["password"], audit=state.audit
            )
        )
    except AuthenticationError as error:
        raise NotAuthenticatedError(str(error)) from None
    lifetime = timedelta(minutes=state.settings.token_lifetime_minutes)
    issued = issue_access_token(principal, state.signing_key, lifetime)
    return TokenPublic(
        access_token=issued.token,
        expires_in=issued.lifetime_seconds,
        expires_at=issued.expires_at,
    )
