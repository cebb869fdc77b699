"""The serving branch of the countyfl exception tree: each error knows its HTTP status."""

from __future__ import annotations

from dataclasses import dataclass

from countyfl.errors import ConfigError, CountyflError


@dataclass(frozen=True)
class FieldProblem:
    """What is wrong with one input field: where, what, and what was expected (with unit).

    ``field`` is a JSON path such as ``patients[0].cholesterol``. The rejected value itself
    is never kept here, so a problem can be audited or logged without patient data.
    """

    field: str
    problem: str
    expected: str | None = None
    unit: str | None = None


class ServingError(CountyflError):
    """A request the API answers with a 4xx or 503 and a readable JSON body."""

    status_code = 500
    code = "server-error"


class NotAuthenticatedError(ServingError):
    """No credentials, or credentials that prove nothing (expired, forged, malformed)."""

    status_code = 401
    code = "not-authenticated"


class TooManyAttemptsError(ServingError):
    """Too many failed authentications from this address or for this account: wait."""

    status_code = 429
    code = "too-many-attempts"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(
            "too many failed authentications from this address or for this account; try "
            f"again in {self.retry_after} s (each further failure doubles the wait)"
        )


class ModelNotFoundError(ServingError, LookupError):
    """No model of that name serves: it does not exist, or it has no production version.

    Both are answered alike, so that the names of unreleased models stay unknown.
    """

    status_code = 404
    code = "model-not-found"


class ModelNotServingError(ServingError):
    """A production version exists but cannot serve (no input transform, weights that do not
    fit, another input schema than the API's route for the model)."""

    status_code = 409
    code = "model-not-serving"


class ModelOutputError(ServingError):
    """The model answered a non-finite probability: nothing is returned."""

    status_code = 503
    code = "model-output-invalid"


class ModelIntegrityError(ServingError):
    """The production version's artifact failed its sha256 check: the service refuses it."""

    status_code = 503
    code = "model-integrity"


class InvalidRecordError(ServingError, ValueError):
    """Input that parses as JSON but breaks the clinical schema or the referral rules."""

    status_code = 422
    code = "invalid-input"

    def __init__(self, message: str, problems: list[FieldProblem]) -> None:
        super().__init__(message)
        self.problems = problems


class RequestTooLargeError(ServingError):
    """The request body is larger than ``max_request_bytes``."""

    status_code = 413
    code = "request-too-large"


class ReferralConfigError(ConfigError):
    """A referral rules or doctor directory file is missing or invalid (file, entry, field)."""
