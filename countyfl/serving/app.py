"""The FastAPI app factory of the clinician API, and its error bodies.

Every error is JSON ``{"error": CODE, "message": TEXT, "fields": [...]}``: 401 (not
authenticated), 403 (role lacks the permission), 404 (no such model), 409 (the model does
not serve now), 413 (body too large), 422 (input outside the schema, naming field, range
and unit), 503 (audit log or database unavailable, or an artifact that failed its
integrity check). Bad input never yields a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from countyfl.audit import AuditError, AuditWriteError
from countyfl.errors import CountyflError
from countyfl.registry import (
    ArtifactIntegrityError,
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StageChangeRefusedError,
)
from countyfl.serving.errors import FieldProblem, NotAuthenticatedError, ServingError
from countyfl.serving.limits import BodySizeLimit
from countyfl.serving.routes import catalogue, predictions, referrals, tokens
from countyfl.serving.schemas import HealthPublic
from countyfl.serving.state import ServingState
from countyfl.settings import ServingSettings

logger = logging.getLogger(__name__)

API_TITLE = "countyfl clinician API"
_STATUS_CODES = {
    400: "bad-request",
    401: "not-authenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "request-too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
}
_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """Build the API: check settings, load referral files, open and migrate the database.

    Parameters
    ----------
    settings : ServingSettings, optional
        Defaults to the environment (``COUNTYFL_*``).

    Raises
    ------
    countyfl.errors.ConfigError
        If the JWT secret is missing, short or a placeholder (outside tests), a referral
        file is invalid, or the database URL is unusable.
    """
    state = ServingState.open(settings or ServingSettings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title=API_TITLE,
        version="1",
        summary="Predictions and referral advice from the county's federated models.",
        description=(
            "Authenticate with POST /v1/token (user name and password) or an API token; "
            "send `Authorization: Bearer TOKEN`. Every model read, prediction and referral "
            "is audited with its purpose and a hash of the input, never the record."
        ),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.serving = state
    app.add_middleware(BodySizeLimit, max_bytes=state.settings.max_request_bytes)
    _add_error_handlers(app)
    app.include_router(tokens.router)
    app.include_router(catalogue.router)
    app.include_router(predictions.router)
    app.include_router(referrals.router)

    @app.get("/v1/health", response_model=HealthPublic, tags=["service"], summary="Liveness")
    def health() -> HealthPublic:
        """The process answers (no database access, not audited)."""
        return HealthPublic()

    return app


def error_body(
    code: str, message: str, problems: list[FieldProblem] | None = None
) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {
        "error": code,
        "message": message,
        "fields": [
            {"field": p.field, "problem": p.problem, "expected": p.expected, "unit": p.unit}
            for p in problems or []
        ],
    }


def _reply(
    status: int,
    code: str,
    message: str,
    problems: list[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, problems),
        status_code=status,
        headers=None if headers is None else dict(headers),
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "error")
        return _reply(error.status_code, code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_request_problem(item) for item in error.errors()]
        message = "the request does not fit the API schema: " + "; ".join(
            f"{p.field}: {p.problem}" for p in problems
        )
        return _reply(422, "invalid-input", message, problems)

    @app.exception_handler(CountyflError)
    async def countyfl_error(_: Request, error: CountyflError) -> JSONResponse:
        return _countyfl_reply(error)

    @app.exception_handler(SQLAlchemyError)
    async def database_error(_: Request, error: SQLAlchemyError) -> JSONResponse:
        logger.error("database error: %s", type(error).__name__)
        return _reply(
            503,
            "database-unavailable",
            "the registry database cannot be reached or refused the query; try again later "
            "and tell the administrator if it persists",
        )


def _countyfl_reply(error: CountyflError) -> JSONResponse:
    if isinstance(error, ServingError):
        problems = getattr(error, "problems", None)
        headers = _AUTHENTICATE if isinstance(error, NotAuthenticatedError) else None
        return _reply(error.status_code, error.code, str(error), problems, headers)
    if isinstance(error, AuthenticationError):
        return _reply(401, "not-authenticated", str(error), headers=_AUTHENTICATE)
    if isinstance(error, PermissionDeniedError):
        return _reply(403, "forbidden", str(error))
    if isinstance(error, NotFoundError):
        return _reply(404, "not-found", str(error))
    if isinstance(error, InvalidInputError):
        return _reply(422, "invalid-input", str(error))
    if isinstance(error, StageChangeRefusedError):
        return _reply(409, "conflict", str(error))
    if isinstance(error, ArtifactIntegrityError):
        logger.error("artifact integrity: %s", error)
        return _reply(
            503, "model-integrity", "a model artifact failed its integrity check; tell an admin"
        )
    if isinstance(error, AuditWriteError):
        logger.error("audit entry not written: %s", error)
        return _reply(
            503,
            "audit-unavailable",
            "the answer was withheld because its audit entry could not be written; nothing "
            "is returned without an audit record. Try again later and tell the administrator",
        )
    if isinstance(error, AuditError):
        logger.error("audit log unavailable: %s", error)
        return _reply(503, "audit-unavailable", "the audit log cannot be read; try again later")
    logger.error("unexpected %s: %s", type(error).__name__, error)
    return _reply(500, "server-error", "the service failed; tell the administrator")


def _request_problem(item: Any) -> FieldProblem:
    location = [str(part) for part in item.get("loc", ())]
    if location and location[0] == "body":
        location = location[1:]
    field = ".".join(location) or "body"
    context = item.get("ctx") or {}
    expected = None
    if "ge" in context and "le" in context:
        expected = f"{context['ge']} to {context['le']}"
    elif "ge" in context:
        expected = f"at least {context['ge']}"
    elif "le" in context:
        expected = f"at most {context['le']}"
    elif "expected" in context:
        expected = str(context["expected"])
    elif "pattern" in context:
        expected = f"text matching {context['pattern']}"
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    return FieldProblem(field=field, problem=message, expected=expected)


__all__ = ["create_app", "error_body"]
