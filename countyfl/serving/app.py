"""The FastAPI app factory of the clinician API, and its error bodies.

Every error is JSON ``{"error": CODE, "message": TEXT, "fields": [...]}``: 401 (not
authenticated), 403 (role lacks the permission), 404 (no such model, or none released),
409 (the production version cannot serve), 413 (body too large), 422 (input outside the
schema, naming field, range and unit; also a body that is not JSON at all), 429 (too many
failed authentications, with ``Retry-After``), 503 (audit log or database unavailable, an
artifact that failed its integrity check, a model that answered no finite probability).
Every operation declares the statuses it can answer in OpenAPI
(:mod:`countyfl.serving.responses`). Bad input never yields a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from countyfl.audit import AuditError, AuditWriteError
from countyfl.errors import CountyflError
from countyfl.registry import (
    Action,
    ArtifactIntegrityError,
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StageChangeRefusedError,
)
from countyfl.serving.auditing import api_field_names, safe_field_path, schema_field_names
from countyfl.serving.errors import (
    FieldProblem,
    NotAuthenticatedError,
    ServingError,
    TooManyAttemptsError,
)
from countyfl.serving.limits import BodySizeLimit
from countyfl.serving.responses import error_responses
from countyfl.serving.routes import catalogue, tokens
from countyfl.serving.routes.predictions import prediction_router
from countyfl.serving.routes.referrals import REFERRAL_TARGET, referral_router
from countyfl.serving.schemas import HealthPublic
from countyfl.serving.state import ServingState
from countyfl.serving.web import console_router
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
    429: "too-many-attempts",
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
        state.start()
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
    served = state.served
    # Field names a refused request may be audited with: the API's and the served tasks'.
    app.state.field_names = api_field_names() | schema_field_names(
        records.record_type for records in served.values()
    )
    app.include_router(tokens.router)
    app.include_router(catalogue.router)
    app.include_router(prediction_router(served, state.settings.max_batch_size))
    app.include_router(referral_router(served, state.rules.symptom_codes))
    console = console_router(state)  # the web console (countyfl.serving.web)
    app.include_router(console)
    app.state.console = console.console
    # What a request refused by the schema is audited as (after authentication).
    app.state.audited_routes = {
        **{
            f"/v1/models/{name}/predict": (Action.MODEL_PREDICT.value, f"model:{name}")
            for name in served
        },
        "/v1/referrals": (Action.REFERRAL_CREATE.value, REFERRAL_TARGET),
    }

    @app.get(
        "/v1/health",
        response_model=HealthPublic,
        tags=["service"],
        summary="Liveness",
        responses=error_responses(),
    )
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
        if error.status_code == 400:
            # FastAPI answers 400 for a body it cannot even decode (not UTF-8, nested too
            # deeply); that is input outside the schema like any other: 422.
            return _reply(
                422,
                "invalid-input",
                "the request body cannot be read as JSON (UTF-8, at most a few hundred "
                "levels deep); send the JSON object the API schema describes",
                [FieldProblem("body", "not readable JSON", expected="a JSON object")],
            )
        code = _STATUS_CODES.get(error.status_code, "error")
        return _reply(error.status_code, code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        route = request.scope.get("route")
        body_field = getattr(route, "body_field", None)
        field_info = getattr(body_field, "field_info", None)
        body_type = getattr(field_info, "annotation", None)
        problems = [_request_problem(item, body_type) for item in error.errors()]
        message = "the request does not fit the API schema: " + "; ".join(
            f"{p.field}: {p.problem}" for p in problems
        )
        await run_in_threadpool(_audit_refused_request, request, problems)
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


def _audit_refused_request(request: Request, problems: list[FieldProblem]) -> None:
    """Audit a prediction or referral the schema refused, once its caller is known.

    The field paths go through :func:`safe_field_path`: a key the client made up is
    recorded as ``<unknown>``, never as typed.
    """
    principal = getattr(request.state, "principal", None)
    route = request.scope.get("route")
    audited = request.app.state.audited_routes.get(getattr(route, "path", None))
    if principal is None or audited is None:
        return
    action, target = audited
    request.app.state.serving.audit.append(
        actor=principal.username,
        role=principal.role.value,
        action=action,
        target=target,
        outcome="refused",
        details={
            "reason": "invalid-input",
            "via": "api",
            "fields": [
                safe_field_path(problem.field, request.app.state.field_names)
                for problem in problems
            ][:20],
        },
    )


def _countyfl_reply(error: CountyflError) -> JSONResponse:
    if isinstance(error, ServingError):
        problems = getattr(error, "problems", None)
        headers: dict[str, str] | None = None
        if isinstance(error, NotAuthenticatedError):
            headers = dict(_AUTHENTICATE)
        elif isinstance(error, TooManyAttemptsError):
            headers = {"Retry-After": str(error.retry_after)}
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


def _request_problem(item: Any, body_type: Any = None) -> FieldProblem:
    """One schema error as a field problem: where (``patients[1].resting_bp``), what,
    and the range and unit the schema expects for that field (never the value sent)."""
    parts = list(item.get("loc", ()))
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    field = "".join(
        f"[{part}]" if isinstance(part, int) else ("." if index else "") + str(part)
        for index, part in enumerate(parts)
    )
    context = item.get("ctx") or {}
    expected, unit = _field_expectation(body_type, parts)
    if expected is None:
        if "ge" in context and "le" in context:
            expected = f"{context['ge']} to {context['le']}"
        elif "ge" in context:
            expected = f"at least {context['ge']}"
        elif "le" in context:
            expected = f"at most {context['le']}"
        elif "max_length" in context:
            expected = f"at most {context['max_length']}"
        elif "expected" in context:
            expected = str(context["expected"])
        elif "pattern" in context:
            expected = f"text matching {context['pattern']}"
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    if item.get("type") == "extra_forbidden":
        message = "unknown field; the schema names every field this object may have"
    return FieldProblem(field=field or "body", problem=message, expected=expected, unit=unit)


def _field_expectation(body_type: Any, parts: list[Any]) -> tuple[str | None, str | None]:
    """(expected range or values, unit) of the body field at ``parts``, from its schema."""
    from pydantic import BaseModel

    from countyfl.serving.features import describe_field

    model = body_type
    info = None
    for part in parts:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None, None
        info = model.model_fields.get(str(part))
        if info is None:
            return None, None
        candidates = [m for m in _models_in(info.annotation)]
        model = candidates[0] if len(candidates) == 1 else None
    if info is None or (isinstance(model, type) and model is not None):
        return None, None
    return describe_field(info)


def _models_in(annotation: Any) -> list[Any]:
    from pydantic import BaseModel

    found = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for argument in getattr(annotation, "__args__", ()) or ():
        found.extend(_models_in(argument))
    return found


__all__ = ["create_app", "error_body"]
