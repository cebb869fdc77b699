"""The error answers every route declares in OpenAPI: each status the API can give.

Every operation lists the statuses it can answer besides success, all with the one error
body (:class:`~countyfl.serving.schemas.ErrorPublic`). :data:`EVERY_ROUTE` are those any
route can give (a failing database or audit log, an unexpected failure); routes add their
own with :func:`error_responses`.
"""

from __future__ import annotations

from typing import Any

from countyfl.serving.schemas import ErrorPublic

DESCRIPTIONS = {
    401: "Not authenticated: no credentials, or credentials that prove nothing.",
    403: "Authenticated, but the role lacks the permission.",
    404: "No such model, or no version of it that the caller may use.",
    409: "The model's production version cannot serve (no input transform, another schema).",
    413: "The request body is larger than the service accepts.",
    422: "The request does not fit the schema: the body names each field, range and unit.",
    429: "Too many failed authentications from this address or for this account.",
    500: "The service failed unexpectedly (a defect; tell the administrator).",
    503: "The database, the audit log or a model's artifact is unavailable or failed its check.",
}
EVERY_ROUTE = (500, 503)
AUTHENTICATED = (401, 403, 422)
"""What any route that needs a bearer token can answer (422: a header or parameter)."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that can answer ``codes`` (and :data:`EVERY_ROUTE`)."""
    found: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, *EVERY_ROUTE}):
        entry: dict[str, Any] = {"model": ErrorPublic, "description": DESCRIPTIONS[code]}
        if code == 429:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before the next attempt.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        if code == 401:
            entry["headers"] = {
                "WWW-Authenticate": {
                    "description": "The authentication scheme: Bearer.",
                    "schema": {"type": "string"},
                }
            }
        found[code] = entry
    return found
