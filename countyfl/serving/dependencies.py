"""FastAPI dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer

from countyfl.registry import LOGIN, AuthenticationError, Outcome, Principal, authenticate_token
from countyfl.registry.users import TOKEN_PREFIX
from countyfl.serving.auth import TokenRejectedError, read_access_token
from countyfl.serving.errors import NotAuthenticatedError
from countyfl.serving.schemas import Purpose
from countyfl.serving.state import ServingState

TOKEN_URL = "/v1/token"

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


def get_principal(
    state: State,
    token: Annotated[str | None, Depends(password_scheme)],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_token_scheme)],
) -> Principal:
    """The caller, from ``Authorization: Bearer`` with an access token or an API token.

    API tokens are checked by the registry, which audits every attempt. A refused access
    token is audited when it names a known principal (a correctly signed, expired token).

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
    if token.startswith(TOKEN_PREFIX):
        try:
            return authenticate_token(state.engine, token, audit=state.audit)
        except AuthenticationError as error:
            raise NotAuthenticatedError(str(error)) from None
    try:
        return read_access_token(token, state.signing_key)
    except TokenRejectedError as error:
        if error.principal is not None:
            state.audit.append(
                actor=error.principal.username,
                role=error.principal.role.value,
                action=LOGIN,
                target=f"user:{error.principal.username}",
                outcome=Outcome.REFUSED.value,
                details={"method": "access-token", "reason": error.reason},
            )
        raise


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
