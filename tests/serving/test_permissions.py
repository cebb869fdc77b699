"""Every role against every endpoint: allowed (2xx) or refused (403, audited).

A clinician asking for a version that is not in production gets 404, exactly as for a
version that does not exist (its refusal is audited as ``not-released``).

The expected table is written out here, not derived from the registry's permission table,
so that a change to either shows up as a failure.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_support import HEART, HEART_PATIENT, PASSWORD, PRINCIPALS, Deployment

from countyfl.registry import Role

REFERRAL = {
    "patient": {
        "age_years": 40,
        "sex": "female",
        "symptoms": [{"code": "cough", "severity": "mild"}],
    }
}
ENDPOINTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "list models": ("GET", "/v1/models", None),
    "read production card": ("GET", f"/v1/models/{HEART}", None),
    "read candidate card": ("GET", f"/v1/models/{HEART}?version=2", None),
    "predict": ("POST", f"/v1/models/{HEART}/predict", {"patient": HEART_PATIENT}),
    "referral": ("POST", "/v1/referrals", REFERRAL),
}
ALLOWED: dict[str, set[Role]] = {
    "list models": {Role.ADMIN, Role.RESEARCHER, Role.CLINICIAN, Role.AUDITOR, Role.REGULATOR},
    "read production card": {
        Role.ADMIN,
        Role.RESEARCHER,
        Role.CLINICIAN,
        Role.AUDITOR,
        Role.REGULATOR,
    },
    "read candidate card": {Role.ADMIN, Role.RESEARCHER, Role.AUDITOR, Role.REGULATOR},
    "predict": {Role.CLINICIAN},
    "referral": {Role.CLINICIAN},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_role_by_endpoint(
    client: TestClient, shared: Deployment, role: Role, endpoint: str
) -> None:
    method, url, body = ENDPOINTS[endpoint]
    principal = PRINCIPALS[role]
    before = len(shared.entries(actor=principal.username))
    response = client.request(method, url, json=body, headers=shared.bearer(principal))
    new = shared.entries(actor=principal.username)[before:]
    if role in ALLOWED[endpoint]:
        assert response.status_code == 200, response.text
        assert new and all(entry["outcome"] == "ok" for entry in new)
    elif role is Role.CLINICIAN and endpoint == "read candidate card":
        missing = client.request(
            method, url.replace("version=2", "version=99"), headers=shared.bearer(principal)
        )
        assert response.status_code == missing.status_code == 404, response.text
        assert response.json()["error"] == missing.json()["error"] == "not-found"
        assert response.json()["message"].replace("2", "N") == missing.json()["message"].replace(
            "99", "N"
        )
        assert [entry["details"]["reason"] for entry in new] == ["not-released"]
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
        assert principal.username in response.json()["message"]
        assert [entry["outcome"] for entry in new] == ["refused"]
        assert new[0]["details"]["reason"] == "permission"


@pytest.mark.parametrize("role", list(Role))
def test_every_role_can_get_a_token(client: TestClient, role: Role) -> None:
    response = client.post(
        "/v1/token", data={"username": PRINCIPALS[role].username, "password": PASSWORD}
    )
    assert response.status_code == 200


def test_node_api_token_may_not_predict(client: TestClient, shared: Deployment) -> None:
    headers = {"Authorization": f"Bearer {shared.api_tokens['county-node']}"}
    response = client.post(
        f"/v1/models/{HEART}/predict", json={"patient": HEART_PATIENT}, headers=headers
    )
    assert response.status_code == 403
    refused = shared.entries(actor="county-node", action="model.predict")[-1]
    assert refused["outcome"] == "refused"


def test_clinician_may_not_list_candidates(client: TestClient, shared: Deployment) -> None:
    response = client.get(
        "/v1/models?stage=candidate", headers=shared.bearer(PRINCIPALS[Role.CLINICIAN])
    )
    assert response.status_code == 403


def test_docs_and_openapi_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"password", "api-token"}
    predict = spec["paths"][f"/v1/models/{HEART}/predict"]["post"]
    assert set(predict["responses"]) == {
        "200",
        "401",
        "403",
        "404",
        "409",
        "413",
        "422",
        "500",
        "503",
    }
    token = spec["paths"]["/v1/token"]["post"]
    assert set(token["responses"]) == {"200", "401", "413", "422", "429", "500", "503"}
