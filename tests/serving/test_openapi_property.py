"""Schemathesis over the whole OpenAPI spec, with each role's token: no 5xx, no failed check.

For every operation the spec declares, hypothesis draws requests from the served spec, both
valid ones (which the API must accept: 2xx, or 401/403/404/409/429 for reasons outside the
request) and invalid ones (which it must refuse with a 4xx), and each is sent with the
role's valid access token. Every default check of schemathesis runs on every answer:
no server error, every status and header documented, every body as documented, valid
data accepted, invalid data rejected, authentication enforced, unsupported methods
refused. The longer run over a live server is ``benchmarks/api_schemathesis.py``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from serving_support import PRINCIPALS, Deployment

from countyfl.registry import Role

EXAMPLES_PER_OPERATION = 12
"""Per operation, role and mode (valid / invalid): bounded, so the suite stays quick."""
OPERATIONS = {
    "POST /v1/token",
    "GET /v1/models",
    "GET /v1/models/{name}",
    "POST /v1/models/heart-disease-diagnosis/predict",
    "POST /v1/models/coronary-risk-10y/predict",
    "POST /v1/referrals",
    "GET /v1/health",
}


@pytest.mark.parametrize("role", list(Role))
def test_whole_spec_passes_every_check_with_each_role(
    shared_app: FastAPI, shared: Deployment, role: Role
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", shared_app)
    headers = shared.bearer(PRINCIPALS[role])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {label(op) for op in operations} == OPERATIONS
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {}
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if operation.path != "/v1/health":  # nothing in it can be invalid
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            run(
                operation, mode, headers, failures, statuses.setdefault(label(operation), Counter())
            )
    assert not failures, "\n\n".join(failures[:5])
    # The run reached the handlers, not only the validation layer.
    assert 200 in statuses["GET /v1/health"]
    if role is Role.CLINICIAN:
        for operation in OPERATIONS - {"POST /v1/token", "GET /v1/models/{name}"}:
            assert 200 in statuses[operation], (operation, statuses[operation])
        assert 200 in statuses["GET /v1/models/{name}"] or 404 in statuses["GET /v1/models/{name}"]
    elif role is not Role.NODE:
        assert 200 in statuses["GET /v1/models"]
        assert 403 in statuses["POST /v1/referrals"]
    assert all(code < 500 for counts in statuses.values() for code in counts)


def label(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def run(
    operation: Any,
    mode: GenerationMode,
    headers: dict[str, str],
    failures: list[str],
    statuses: Counter[int],
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        sent = headers
        if mode is GenerationMode.NEGATIVE and "authorization" in {
            name.lower() for name in (case.headers or {})
        }:
            sent = {}  # the case tests a malformed Authorization header: send it as drawn
        response = case.call_and_validate(headers=sent)
        statuses[response.status_code] += 1

    try:
        check()
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # schemathesis's FailureGroup, or hypothesis's own report
        failures.append(f"{label(operation)} ({mode.value}): {error}")
