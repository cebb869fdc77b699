"""The attacks of issue 13 that reached the API, replayed over HTTP against a fresh service.

Each test is one finding; each failed before the fix (see the issue for what they got).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from serving_support import (
    ADMIN,
    AUDITOR,
    CLINICIAN,
    FRAMINGHAM_PATIENT,
    HEART,
    HEART_PATIENT,
    PASSWORD,
    PRINCIPALS,
    RESEARCHER,
    RISK,
    SECRET,
    Deployment,
)
from sqlalchemy import text

from countyfl.registry import (
    Role,
    disable_user,
    enable_user,
    set_password,
    set_role,
)
from countyfl.serving import create_app
from countyfl.serving.auth import issue_access_token
from countyfl.serving.throttle import LoginThrottle


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app(deployment: Deployment) -> Iterator[FastAPI]:
    deployment.release()
    # Summaries are written when a test flushes them, never by the clock mid-test.
    built = create_app(deployment.settings(failed_login_summary_seconds=3600))
    yield built
    built.state.serving.close()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def clock(app: FastAPI) -> FakeClock:
    """The service's login throttle, on a clock the test moves."""
    clock = FakeClock()
    settings = app.state.serving.settings
    app.state.serving.throttle = LoginThrottle(
        account_free=settings.login_free_failures,
        address_free=settings.address_free_failures,
        base=settings.lockout_seconds,
        ceiling=settings.max_lockout_seconds,
        clock=clock,
    )
    return clock


def login(client: TestClient, username: str, password: str) -> Any:
    return client.post("/v1/token", data={"username": username, "password": password})


# -- finding 5: throttling and the audit flood -------------------------------------------


def test_a_hundred_wrong_passwords_lock_the_account_and_the_right_one_waits(
    client: TestClient, clock: FakeClock, deployment: Deployment
) -> None:
    answers = [login(client, "chen", f"guess number {n:03d}").status_code for n in range(100)]
    assert answers[:5] == [401] * 5
    assert set(answers[5:]) == {429}, "locked by the 5th failure; no password is checked"
    right = login(client, "chen", PASSWORD)
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) >= 1
    assert right.json()["error"] == "too-many-attempts"
    # Once the lock has passed the right password works, and the count starts again.
    clock.now += 3
    assert login(client, "chen", PASSWORD).status_code == 200
    locked = deployment.entries(action="login.locked")
    assert [(entry["actor"], entry["target"]) for entry in locked] == [("chen", "user:chen")]
    # The 5th failure locks the account again (2 s), the 6th for 4 s, and so on.
    for _ in range(5):
        assert login(client, "chen", "wrong again, sorry").status_code == 401
    assert login(client, "chen", PASSWORD).status_code == 429
    clock.now += 2.5
    assert login(client, "chen", "wrong again, sorry").status_code == 401
    clock.now += 2.5
    assert login(client, "chen", PASSWORD).status_code == 429, "the 6th failure locked 4 s"
    clock.now += 2
    assert login(client, "chen", PASSWORD).status_code == 200


def test_one_address_guessing_many_accounts_is_slowed_down(
    client: TestClient, clock: FakeClock
) -> None:
    answers = [login(client, f"user-{n}", "some password").status_code for n in range(40)]
    assert answers[:30] == [401] * 30
    assert set(answers[30:]) == {429}
    assert login(client, "aude", PASSWORD).status_code == 429, "the address, not the account"
    clock.now += 3
    assert login(client, "aude", PASSWORD).status_code == 200


def test_a_flood_of_bogus_tokens_writes_one_summary_not_an_entry_each(
    client: TestClient, app: FastAPI, deployment: Deployment
) -> None:
    app.state.serving.failed_logins.flush(force=True)
    before = len(deployment.entries())
    forged = issue_access_token(ADMIN, b"f" * 48, timedelta(minutes=5), token_version=0).token
    for n in range(200):
        bearer = f"cfl_bogus-{n}" if n % 2 else forged
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 401
    assert len(deployment.entries()) == before, "nothing durable per failed request"
    assert app.state.serving.failed_logins.flush(force=True)
    (summary,) = deployment.entries()[before:]
    assert summary["action"] == "login.refused-summary"
    assert summary["details"]["refused"] == 200
    assert summary["details"]["reasons"] == {"invalid-token": 100, "unknown-token": 100}
    assert summary["details"]["addresses"] == {"testclient": 200}
    # A valid token from the same (busy) address still works.
    assert client.get("/v1/models", headers=deployment.bearer(AUDITOR)).status_code == 200


# -- finding 7: a disabled user's token stops at once ------------------------------------


def test_tokens_stop_when_the_user_is_disabled_demoted_or_its_password_changes(
    client: TestClient, deployment: Deployment
) -> None:
    def token_of(username: str) -> dict[str, str]:
        response = login(client, username, PASSWORD)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    headers = token_of("aude")
    assert client.get("/v1/models", headers=headers).status_code == 200
    disable_user(deployment.engine, "aude", principal=ADMIN, audit=deployment.audit)
    assert client.get("/v1/models", headers=headers).status_code == 401
    enable_user(deployment.engine, "aude", principal=ADMIN, audit=deployment.audit)
    assert client.get("/v1/models", headers=headers).status_code == 401, "a new token is needed"

    headers = token_of("aude")
    set_role(deployment.engine, "aude", Role.CLINICIAN, principal=ADMIN, audit=deployment.audit)
    assert client.get("/v1/models", headers=headers).status_code == 401

    headers = token_of("rita")
    set_password(
        deployment.engine,
        "rita",
        "a brand new passphrase",
        principal=RESEARCHER,
        audit=deployment.audit,
    )
    assert client.get("/v1/models", headers=headers).status_code == 401


def test_a_token_without_a_version_or_signed_with_a_weak_key_proves_nothing(
    client: TestClient,
) -> None:
    import jwt

    claims = {"sub": "chen", "role": "clinician", "iss": "countyfl", "aud": "countyfl-api"}
    unversioned = jwt.encode({**claims, "exp": 2**40, "iat": 0, "jti": "x"}, SECRET, "HS256")
    weak = issue_access_token(
        PRINCIPALS[Role.CLINICIAN], b"a" * 32, timedelta(minutes=5), token_version=0
    )
    for token in (unversioned, weak.token):
        assert (
            client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code
            == 401
        )


# -- finding 8: nothing a client typed reaches the audit log -----------------------------


def test_a_password_typed_as_user_name_is_audited_as_a_keyed_hash(
    client: TestClient, app: FastAPI, deployment: Deployment
) -> None:
    typed = "hunter2-my-real-password"
    assert login(client, typed, "x").status_code == 401
    assert login(client, typed, "y").status_code == 401
    app.state.serving.failed_logins.flush(force=True)
    stored = deployment.raw_audit_text()
    assert typed not in stored
    accounts = deployment.entries(action="login.refused-summary")[-1]["details"]["accounts"]
    (pseudonym,) = accounts
    assert pseudonym.startswith("unknown-user-") and accounts[pseudonym] == 2


def test_a_client_chosen_field_name_never_reaches_the_audit_log(
    client: TestClient, deployment: Deployment
) -> None:
    secret_key = "Zhang San 110101199003071234"
    body = {"patients": [HEART_PATIENT, {**HEART_PATIENT, secret_key: 1, "age": 300}]}
    response = client.post(
        f"/v1/models/{HEART}/predict", headers=deployment.bearer(CLINICIAN), json=body
    )
    assert response.status_code == 422
    assert "110101199003071234" not in deployment.raw_audit_text()
    refused = deployment.entries(action="model.predict", outcome="refused")[-1]
    assert refused["details"]["fields"] == ["patients[1].age", "patients[1].<unknown>"]


# -- finding 4: bounded input, every status in the spec, one schema per model -------------


@pytest.mark.parametrize("role", list(Role))
def test_a_version_number_beyond_any_integer_is_422_for_every_role(
    client: TestClient, deployment: Deployment, role: Role
) -> None:
    response = client.get(
        f"/v1/models/{HEART}?version=1180591620717411303424",
        headers=deployment.bearer(PRINCIPALS[role]),
    )
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "version"


def test_a_stored_lineage_nested_900_deep_does_not_take_the_catalogue_down(
    client: TestClient, deployment: Deployment
) -> None:
    nested: Any = "x"
    for _ in range(900):
        nested = {"k": nested}
    # Written as an older version could have (registration refuses it now).
    with deployment.engine.begin() as connection:
        connection.execute(
            text("UPDATE registry_model_versions SET encryption = :value"),
            {"value": json.dumps(nested)},
        )
    for role in (Role.ADMIN, Role.RESEARCHER, Role.AUDITOR, Role.REGULATOR, Role.CLINICIAN):
        listed = client.get("/v1/models", headers=deployment.bearer(PRINCIPALS[role]))
        assert listed.status_code == 200, (role, listed.text)
        assert listed.json()[0]["encryption"] == {"unreadable": True}


@pytest.mark.parametrize(
    "patient",
    [
        {"age_years": 30, "sex": "female", "pregnant": 0},
        {"age_years": 30, "sex": "female", "pregnant": "yes"},
        {"age_years": True, "sex": "female"},
        {"age_years": 30, "sex": "male", "pregnant": True},
    ],
)
def test_booleans_are_booleans_and_numbers_are_numbers(
    client: TestClient, deployment: Deployment, patient: dict[str, object]
) -> None:
    response = client.post(
        "/v1/referrals", headers=deployment.bearer(CLINICIAN), json={"patient": patient}
    )
    assert response.status_code == 422, response.text


def test_a_body_that_is_not_utf8_or_nests_too_deep_is_422_not_400(
    client: TestClient, deployment: Deployment
) -> None:
    headers = {**deployment.bearer(CLINICIAN), "Content-Type": "application/json"}
    for body in (b'{"patient": "\xff\xfe"}', b"[" * 30_000 + b"]" * 30_000):
        response = client.post(f"/v1/models/{HEART}/predict", headers=headers, content=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid-input"


def test_each_model_has_its_own_input_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    def body_of(path: str) -> str:
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return str(ref["$ref"])

    heart = spec["components"]["schemas"][body_of(f"/v1/models/{HEART}/predict").split("/")[-1]]
    risk = spec["components"]["schemas"][body_of(f"/v1/models/{RISK}/predict").split("/")[-1]]
    assert heart["properties"]["patient"]["$ref"].endswith("/HeartDiseasePatient")
    assert risk["properties"]["patient"]["$ref"].endswith("/FraminghamPatient")
    assert "/v1/models/{name}/predict" not in spec["paths"]
    # The token form says exactly what the endpoint accepts.
    form = spec["paths"]["/v1/token"]["post"]["requestBody"]["content"]
    assert form["application/x-www-form-urlencoded"]["schema"]["additionalProperties"] is False


def test_a_token_request_with_unknown_fields_is_422(client: TestClient) -> None:
    response = client.post("/v1/token", data={"username": "chen", "password": PASSWORD, "x": "1"})
    assert response.status_code == 422
    assert response.json()["fields"][0]["problem"] == "unknown form field"


# -- finding 1: predict never answers a non-finite probability ---------------------------


def _poison_production(deployment: Deployment) -> None:
    """Give the production version NaN weights, as registration before issue 13 allowed."""
    with deployment.engine.connect() as connection:
        uri = connection.execute(
            text("SELECT artifact_uri FROM registry_model_versions WHERE stage = 'production'")
        ).scalar_one()
    with np.load(uri) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["linear.weight"] = arrays["linear.weight"] * np.nan
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    Path(uri).write_bytes(buffer.getvalue())
    import hashlib

    with deployment.engine.begin() as connection:
        connection.execute(
            text("UPDATE registry_model_versions SET artifact_sha256 = :sha"),
            {"sha": hashlib.sha256(buffer.getvalue()).hexdigest()},
        )


def test_a_model_with_nan_weights_never_answers(client: TestClient, deployment: Deployment) -> None:
    _poison_production(deployment)
    headers = deployment.bearer(CLINICIAN)
    predicted = client.post(
        f"/v1/models/{HEART}/predict", headers=headers, json={"patient": HEART_PATIENT}
    )
    assert predicted.status_code == 409 and "not a finite number" in predicted.json()["message"]
    referral = client.post(
        "/v1/referrals",
        headers=headers,
        json={
            "patient": {"age_years": 50, "sex": "male"},
            "risk": {"model": HEART, "patient": HEART_PATIENT},
        },
    )
    assert referral.status_code == 409
    assert "nan" not in referral.text.lower().replace("nan-", "")


def test_a_model_answering_nan_in_memory_is_withheld_and_audited(
    client: TestClient, app: FastAPI, deployment: Deployment
) -> None:
    headers = deployment.bearer(CLINICIAN)
    url = f"/v1/models/{HEART}/predict"
    assert client.post(url, headers=headers, json={"patient": HEART_PATIENT}).status_code == 200
    served = app.state.serving.models.cached(HEART)
    served.module.linear.bias.data.fill_(float("nan"))  # memory corrupted after the load checks
    response = client.post(url, headers=headers, json={"patient": HEART_PATIENT})
    assert response.status_code == 503
    assert response.json()["error"] == "model-output-invalid"
    assert "probability" not in response.json()
    failed = deployment.entries(action="model.predict", outcome="failed")[-1]
    assert failed["details"]["reason"] == "model-output-invalid"


# -- finding 9: unreleased and missing models answer alike -------------------------------


def test_an_unreleased_model_answers_like_a_missing_one(
    client: TestClient, deployment: Deployment
) -> None:
    deployment.register(RISK, scenario="framingham-county", architecture="risk-logreg")
    headers = deployment.bearer(CLINICIAN)
    unreleased = client.post(
        f"/v1/models/{RISK}/predict", headers=headers, json={"patient": FRAMINGHAM_PATIENT}
    )
    with deployment.engine.begin() as connection:
        connection.execute(text("DELETE FROM registry_model_versions WHERE name = :n"), {"n": RISK})
    missing = client.post(
        f"/v1/models/{RISK}/predict", headers=headers, json={"patient": FRAMINGHAM_PATIENT}
    )
    assert unreleased.status_code == missing.status_code == 404
    assert unreleased.json() == missing.json()
