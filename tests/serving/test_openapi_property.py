"""Property-based run over the OpenAPI spec (schemathesis): no input yields a 5xx.

Each operation's request strategy comes from the served spec; hypothesis draws requests
(valid and invalid ones) and every one is sent with a clinician's valid access token.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from serving_support import CLINICIAN, Deployment

EXAMPLES_PER_OPERATION = 40


def test_no_server_errors_with_a_valid_token(shared_app: FastAPI, shared: Deployment) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", shared_app)
    headers = shared.bearer(CLINICIAN)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/token",
        "GET /v1/models",
        "GET /v1/models/{name}",
        "POST /v1/models/{name}/predict",
        "POST /v1/referrals",
    }
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        run_operation(operation, headers, statuses)
    # The run reached the handlers, not only the validation layer.
    assert 200 in statuses["GET /v1/models"]
    assert statuses["POST /v1/models/{name}/predict"] & {200, 404, 422}


def run_operation(operation: Any, headers: dict[str, str], statuses: dict[str, set[int]]) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(headers=headers)
        statuses.setdefault(label, set()).add(response.status_code)
        assert response.status_code < 500, (label, response.status_code, response.text)
        case.validate_response(response, checks=[not_a_server_error])

    check()
