"""FastAPI dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer

from countyfl.registry import AuthenticationError, Principal, authenticate_token
from countyfl.registry.principals import access_refusal
from countyfl.registry.users import TOKEN_PREFIX
from countyfl.serving.auth import TokenRejectedError, read_access_token
from countyfl.serving.errors import NotAuthenticatedError
from countyfl.serving.login_audit import CountingSink
from countyfl.serving.schemas import Purpose
from countyfl.serving.state import ServingState

TOKEN_URL = "/v1/token"
ANONYMOUS = "anonymous"
"""How failure counts name a caller whose token names no one."""

# Both schemes read the same header; declaring both documents the two kinds of bearer
# token in OpenAPI (and gives /docs its "Authorize" dialog for the password flow).
password_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    scheme_name="password",
    description="Access token from POST /v1/token (user name and password).",
    auto_error=False,
)
api_token_scheme = HTTPBearer(
    scheme_name="api-token",
    bearerFormat="cfl_...",
    description="API token of a system, issued by an admin (`countyfl users token`).",
    auto_error=False,
)


def get_state(request: Request) -> ServingState:
    """The service's state, set up by ``create_app``."""
    state: ServingState = request.app.state.serving
    return state


State = Annotated[ServingState, Depends(get_state)]


def client_address(request: Request) -> str:
    """The TCP peer's address (what throttling and failure counts are kept by)."""
    return request.client.host if request.client is not None else "unknown"


def get_principal(
    request: Request,
    state: State,
    token: Annotated[str | None, Depends(password_scheme)],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_token_scheme)],
) -> Principal:
    """The caller, from ``Authorization: Bearer`` with an access token or an API token.

    An access token is checked twice: its signature and expiry, then (one query) its user
    in the registry, which must still be enabled and approved, with the token's role and
    token version, so a disabled user's tokens stop at once. API tokens are checked by the
    registry. Failures are counted against the client address (:mod:`countyfl.serving.
    throttle`) and audited as counts (:mod:`countyfl.serving.login_audit`), not one entry
    each; a successful API-token login is audited by the registry.

    Bearer tokens are not refused for their address's failures (a token cannot be guessed,
    and a valid one from a busy address must keep working); their failures still count
    towards the address, whose password logins are then throttled.

    Raises
    ------
    NotAuthenticatedError
        Without credentials, or with credentials that prove nothing.
    """
    if not token:
        raise NotAuthenticatedError(
            "not authenticated: send 'Authorization: Bearer TOKEN' with an access token from "
            "POST /v1/token or an API token"
        )
    address = client_address(request)
    if token.startswith(TOKEN_PREFIX):
        principal = _api_token_principal(state, token, address)
        request.state.principal = principal
        return principal
    try:
        claims = read_access_token(token, state.signing_key)
    except TokenRejectedError as error:
        known = error.principal
        _failed(
            state,
            address,
            account=known.username if known is not None else ANONYMOUS,
            reason=error.reason,
        )
        raise
    reason = access_refusal(state.engine, claims.principal, claims.token_version)
    if reason:
        _failed(state, address, account=claims.principal.username, reason=reason)
        raise TokenRejectedError(reason)
    request.state.principal = claims.principal
    return claims.principal


def _failed(state: ServingState, address: str, *, account: str, reason: str) -> None:
    """Count a failed access token, for the audit summary and the address's throttle."""
    state.failed_logins.count(
        address=address, account=account, method="access-token", reason=reason
    )
    state.throttle.failed(address=address)


def _api_token_principal(state: ServingState, token: str, address: str) -> Principal:
    counting = CountingSink(state.audit, state.failed_logins, address)
    try:
        return authenticate_token(state.engine, token, audit=counting)
    except AuthenticationError as error:
        state.throttle.failed(address=address)
        raise NotAuthenticatedError(str(error)) from None


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def get_read_purpose(
    x_purpose: Annotated[
        Purpose,
        Header(
            alias="X-Purpose",
            description="Why the model is read; recorded in the audit log.",
        ),
    ] = Purpose.MODEL_REVIEW,
) -> Purpose:
    """The purpose of a read, from the ``X-Purpose`` header (``model-review`` if absent)."""
    return x_purpose


ReadPurpose = Annotated[Purpose, Depends(get_read_purpose)]
