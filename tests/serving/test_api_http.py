"""The API over real HTTP: uvicorn on 127.0.0.1, httpx as the client."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from serving_support import (
    ADMIN,
    CLINICIAN,
    FRAMINGHAM_PATIENT,
    HEART,
    HEART_PATIENT,
    PASSWORD,
    REGULATOR,
    RISK,
    SECRET,
    Deployment,
    LiveServer,
    heldout,
    live_server,
)
from sqlalchemy import text

from countyfl import models
from countyfl.data import fed_heart_disease
from countyfl.data.schema import HeartDiseaseRecord
from countyfl.registry import archive, get_version, promote
from countyfl.serving import create_app
from countyfl.serving.auth import issue_access_token
from countyfl.training.local import predict_proba


@pytest.fixture(scope="module")
def served_app(shared: Deployment) -> FastAPI:
    return create_app(shared.settings(failed_login_summary_seconds=3600))


@pytest.fixture(scope="module")
def server(served_app: FastAPI) -> Iterator[LiveServer]:
    with live_server(served_app) as running:
        yield running


def failure_summary(app: FastAPI, shared: Deployment) -> dict[str, object]:
    """Write the pending failed-authentication summary now and return its details."""
    assert app.state.serving.failed_logins.flush(force=True)
    return shared.entries(action="login.refused-summary")[-1]["details"]


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def login(http: httpx.Client, username: str = CLINICIAN.username) -> dict[str, str]:
    """Headers with an access token from the password flow, over HTTP."""
    response = http.post("/v1/token", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def clinician() -> dict[str, str]:
    """Headers with a clinician's access token signed by the server's key (no password hash)."""
    token = issue_access_token(
        CLINICIAN, SECRET.encode(), timedelta(minutes=15), token_version=0
    ).token
    return {"Authorization": f"Bearer {token}"}


def canonical_sha256(value: object) -> str:
    text_ = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text_.encode()).hexdigest()


# -- tokens ------------------------------------------------------------------------------


def test_password_flow_issues_a_short_lived_token(http: httpx.Client, shared: Deployment) -> None:
    response = http.post(
        "/v1/token",
        data={"grant_type": "password", "username": "chen", "password": PASSWORD},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 15 * 60
    payload = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
    assert (payload["sub"], payload["role"]) == ("chen", "clinician")
    assert payload["exp"] - payload["iat"] == 15 * 60
    assert shared.entries(action="login", actor="chen", outcome="ok")


def test_wrong_password_is_401_and_counted_in_the_audit_summary(
    http: httpx.Client, shared: Deployment, served_app: FastAPI
) -> None:
    response = http.post("/v1/token", data={"username": "chen", "password": "not the password"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "not-authenticated"
    assert not shared.entries(action="login", actor="chen", outcome="refused")
    summary = failure_summary(served_app, shared)
    assert summary["reasons"] == {"wrong-password": 1}
    assert summary["accounts"] == {"chen": 1}
    assert summary["methods"] == {"password": 1}
    assert "not the password" not in shared.raw_audit_text()


def test_token_request_without_a_form_is_422(http: httpx.Client) -> None:
    response = http.post("/v1/token", json={"username": "chen", "password": PASSWORD})
    assert response.status_code == 422
    assert response.json()["fields"][0]["expected"] == "application/x-www-form-urlencoded"
    missing = http.post("/v1/token", data={"username": "chen"})
    assert missing.status_code == 422
    assert [f["field"] for f in missing.json()["fields"]] == ["password"]


def test_expired_token_is_401_and_counted_for_its_owner(
    http: httpx.Client, shared: Deployment, served_app: FastAPI
) -> None:
    stale = issue_access_token(
        CLINICIAN,
        SECRET.encode(),
        timedelta(minutes=15),
        token_version=0,
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    served_app.state.serving.failed_logins.flush(force=True)
    response = http.get("/v1/models", headers={"Authorization": f"Bearer {stale.token}"})
    assert response.status_code == 401
    summary = failure_summary(served_app, shared)
    assert summary["reasons"] == {"expired-token": 1}
    assert summary["accounts"] == {"chen": 1}


def test_forged_token_is_401_and_not_taken_for_the_named_user(
    http: httpx.Client, shared: Deployment
) -> None:
    forged = issue_access_token(ADMIN, b"f" * 48, timedelta(minutes=15), token_version=0).token
    before = len(shared.entries(actor="ada"))
    response = http.get("/v1/models", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert len(shared.entries(actor="ada")) == before


def test_alg_none_token_is_401(http: httpx.Client) -> None:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(datetime.now(UTC).timestamp())
    claims = {
        "sub": "ada",
        "role": "admin",
        "iat": now,
        "exp": now + 600,
        "iss": "countyfl",
        "aud": "countyfl-api",
        "ver": 0,
        "jti": "x",
    }
    token = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_missing_or_bad_api_token_is_401(
    http: httpx.Client, shared: Deployment, served_app: FastAPI
) -> None:
    served_app.state.serving.failed_logins.flush(force=True)
    assert http.get("/v1/models").status_code == 401
    bad = http.get("/v1/models", headers={"Authorization": "Bearer cfl_not-a-real-token"})
    assert bad.status_code == 401
    summary = failure_summary(served_app, shared)
    assert summary["reasons"] == {"unknown-token": 1}
    assert summary["methods"] == {"token": 1}
    good = http.get("/v1/models", headers={"Authorization": f"Bearer {shared.api_tokens['chen']}"})
    assert good.status_code == 200


# -- models ------------------------------------------------------------------------------


def test_clinician_lists_production_only(http: httpx.Client, shared: Deployment) -> None:
    cards = http.get("/v1/models", headers=login(http)).json()
    assert {(c["name"], c["version"], c["stage"]) for c in cards} == {
        (HEART, 1, "production"),
        (RISK, 1, "production"),
    }
    everything = http.get("/v1/models", headers=shared.bearer(ADMIN)).json()
    assert (HEART, 2, "candidate") in {(c["name"], c["version"], c["stage"]) for c in everything}


def test_model_card_shows_lineage_and_privacy(http: httpx.Client, shared: Deployment) -> None:
    response = http.get(
        f"/v1/models/{HEART}", headers={**clinician(), "X-Purpose": "quality-improvement"}
    )
    assert response.status_code == 200
    card = response.json()
    assert (card["version"], card["stage"], card["serves_predictions"]) == (1, "production", True)
    assert [i["institution"] for i in card["institutions"]] == [
        "cleveland",
        "hungary",
        "switzerland",
        "va-long-beach",
    ]
    assert card["institutions"][0]["epsilon"] == 1.0
    assert card["metrics"]["federated"]["auc"] == 0.8
    measured = card["evaluation"]
    assert measured["rows"] == 254 and 0.5 < measured["metrics"]["auc"] < 1
    assert measured["evaluated_by"] == REGULATOR.username
    assert card["features"]["schema"] == "heart-disease"
    assert "artifact_uri" not in card
    read = shared.entries(action="model.read", actor="chen")[-1]
    assert read["target"] == f"model:{HEART}:v1"
    assert read["details"]["purpose"] == "quality-improvement"


# -- predictions -------------------------------------------------------------------------


def test_prediction_is_answered_and_audited_without_the_record(
    http: httpx.Client, shared: Deployment
) -> None:
    patient = {**HEART_PATIENT, "cholesterol": 287.3, "max_heart_rate": 131.7}
    response = http.post(
        f"/v1/models/{HEART}/predict", headers=clinician(), json={"patient": patient}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == HEART and body["model"]["version"] == 1
    assert (
        body["model"]["sha256"]
        == get_version(shared.engine, HEART, 1, principal=ADMIN, audit=shared.audit).artifact_sha256
    )
    (prediction,) = body["predictions"]
    assert 0 < prediction["probability"] < 1
    assert prediction["risk_band"] in {"low", "moderate", "high"}
    assert len(prediction["top_features"]) == 3
    expected_hash = canonical_sha256([patient])
    assert body["input_sha256"] == expected_hash
    (entry,) = [
        e
        for e in shared.entries(action="model.predict", outcome="ok")
        if e["seq"] == body["audit_entry"]
    ]
    assert entry["actor"] == "chen" and entry["role"] == "clinician"
    assert entry["target"] == f"model:{HEART}:v1"
    assert entry["details"]["input-sha256"] == expected_hash
    assert entry["details"]["purpose"] == "treatment"
    stored = shared.raw_audit_text()
    for raw in ("287.3", "131.7", "lv hypertrophy", "asymptomatic"):
        assert raw not in stored


def test_api_probability_equals_predict_proba_on_the_same_input(
    http: httpx.Client, shared: Deployment
) -> None:
    """Oracle: encode + pooled transform + the registered weights, computed independently."""
    version = get_version(shared.engine, HEART, 1, principal=ADMIN, audit=shared.audit)
    with np.load(io.BytesIO(Path(version.artifact_uri).read_bytes())) as stored:
        state = {key: torch.from_numpy(stored[key]) for key in stored.files}
    model = models.build("diagnosis-logreg", 13)
    model.load_state_dict(state)
    rng = np.random.default_rng(3)
    patients = [
        {
            **HEART_PATIENT,
            "age": int(rng.integers(30, 80)),
            "sex": str(rng.choice(["Male", "Female"])),
            "chest_pain": str(
                rng.choice(["typical angina", "atypical angina", "non-anginal", "asymptomatic"])
            ),
            "cholesterol": float(rng.integers(150, 400)),
            "resting_ecg": str(rng.choice(["normal", "st-t abnormality", "lv hypertrophy"])),
            "st_depression": round(float(rng.uniform(0, 4)), 1),
        }
        for _ in range(8)
    ]
    raw = np.array(
        [
            fed_heart_disease.encode(
                HeartDiseaseRecord.model_validate({**p, "hospital": "Hungary", "diagnosis": 0})
            )
            for p in patients
        ]
    )
    assert version.features is not None
    z = ((raw - np.array(version.features.mean)) / np.array(version.features.scale)).astype(
        np.float32
    )
    expected = predict_proba(model, z)
    response = http.post(
        f"/v1/models/{HEART}/predict", headers=clinician(), json={"patients": patients}
    )
    assert response.status_code == 200, response.text
    served = [p["probability"] for p in response.json()["predictions"]]
    assert served == expected.tolist()
    weight = model.linear.weight.detach().numpy()[0].astype(np.float64)
    top = response.json()["predictions"][0]["top_features"][0]
    column = fed_heart_disease.FEATURE_NAMES.index(top["feature"])
    assert top["contribution"] == pytest.approx(weight[column] * float(z[0, column]), rel=1e-6)
    assert abs(top["contribution"]) == pytest.approx(np.max(np.abs(weight * z[0])), rel=1e-6)


def test_framingham_model_serves_its_own_schema(http: httpx.Client) -> None:
    headers = clinician()
    ok = http.post(
        f"/v1/models/{RISK}/predict", headers=headers, json={"patient": FRAMINGHAM_PATIENT}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["model"]["name"] == RISK
    wrong = http.post(
        f"/v1/models/{RISK}/predict", headers=headers, json={"patient": HEART_PATIENT}
    )
    assert wrong.status_code == 422
    fields = {problem["field"] for problem in wrong.json()["fields"]}
    assert {"patient.male", "patient.chest_pain"} <= fields


def test_out_of_range_value_is_422_naming_field_range_and_unit(http: httpx.Client) -> None:
    response = http.post(
        f"/v1/models/{HEART}/predict",
        headers=clinician(),
        json={"patients": [HEART_PATIENT, {**HEART_PATIENT, "resting_bp": 400}]},
    )
    assert response.status_code == 422
    (problem,) = response.json()["fields"]
    assert problem == {
        "field": "patients[1].resting_bp",
        "problem": "Input should be less than or equal to 250",
        "expected": "0 to 250",
        "unit": "mmHg",
    }


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"patient": 3}',
        b'{"patient": {}, "patients": [{}]}',
        b'{"patients": []}',
        b'{"patient": {"age": NaN}}',
        b'{"purpose": "curiosity", "patient": {}}',
    ],
)
def test_malformed_bodies_are_4xx_not_5xx(http: httpx.Client, body: bytes) -> None:
    response = http.post(
        f"/v1/models/{HEART}/predict",
        headers={**clinician(), "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid-input"


def test_unknown_model_is_404(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/no-such-model/predict", headers=clinician(), json={"patient": HEART_PATIENT}
    )
    assert response.status_code == 404
    assert response.json()["error"] == "not-found"


def test_body_over_the_limit_is_413_before_parsing(http: httpx.Client, shared: Deployment) -> None:
    headers = {**clinician(), "Content-Type": "application/json"}
    before = len(shared.entries(action="model.predict"))
    declared = http.post(f"/v1/models/{HEART}/predict", headers=headers, content=b"{" * 70_000)
    assert declared.status_code == 413
    assert declared.json()["error"] == "request-too-large"

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 8192

    streamed = http.post(f"/v1/models/{HEART}/predict", headers=headers, content=chunks())
    assert streamed.status_code == 413
    assert len(shared.entries(action="model.predict")) == before


def test_too_many_patients_is_422(http: httpx.Client) -> None:
    response = http.post(
        f"/v1/models/{HEART}/predict", headers=clinician(), json={"patients": [HEART_PATIENT] * 101}
    )
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "patients"
    assert response.json()["fields"][0]["expected"] == "at most 100"


# -- referrals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient", "population", "specialty"),
    [
        ({"age_years": 29, "sex": "female", "pregnant": True}, "pregnant", "obstetrics"),
        ({"age_years": 1.5, "sex": "male"}, "young-child", "pediatrics"),
        ({"age_years": 78, "sex": "female"}, "elderly", "geriatrics"),
    ],
)
def test_referral_gives_special_populations_priority(
    http: httpx.Client,
    shared: Deployment,
    patient: dict[str, object],
    population: str,
    specialty: str,
) -> None:
    body = {"patient": {**patient, "symptoms": [{"code": "fever", "severity": "mild"}]}}
    response = http.post("/v1/referrals", headers=clinician(), json=body)
    assert response.status_code == 200, response.text
    advice = response.json()
    assert advice["special_populations"] == [population]
    assert (advice["level"], advice["urgency"]) == ("township", "soon")
    assert advice["specialty"] == specialty
    assert advice["specialist"] is not None and specialty in advice["specialist"]["skills"]
    entry = shared.entries(action="referral.create", outcome="ok")[-1]
    assert entry["seq"] == advice["audit_entry"]
    assert entry["details"]["input-sha256"] == advice["input_sha256"]
    assert entry["details"]["level"] == "township"


def test_referral_weighs_the_model_risk(http: httpx.Client, shared: Deployment) -> None:
    body = {
        "patient": {"age_years": 50, "sex": "male"},
        "risk": {"model": HEART, "patient": HEART_PATIENT},
    }
    response = http.post("/v1/referrals", headers=clinician(), json=body)
    assert response.status_code == 200, response.text
    advice = response.json()
    assert advice["risk"]["model"]["name"] == HEART and advice["risk"]["model"]["version"] == 1
    predicted = http.post(
        f"/v1/models/{HEART}/predict", headers=clinician(), json={"patient": HEART_PATIENT}
    )
    assert advice["risk"]["probability"] == predicted.json()["predictions"][0]["probability"]
    if advice["risk"]["risk_band"] == "high":
        assert advice["level"] == "county"
    entry = shared.entries(action="referral.create", outcome="ok")[-1]
    assert entry["details"]["model"] == f"model:{HEART}:v1"


def test_red_flag_referral_goes_to_the_county_hospital(http: httpx.Client) -> None:
    body = {
        "patient": {
            "age_years": 45,
            "sex": "male",
            "symptoms": [{"code": "stroke-signs", "severity": "mild"}],
        }
    }
    advice = http.post("/v1/referrals", headers=clinician(), json=body).json()
    assert (advice["level"], advice["urgency"], advice["red_flags"]) == (
        "county",
        "emergency",
        ["stroke-signs"],
    )


def test_unknown_symptom_is_422_listing_known_codes(http: httpx.Client) -> None:
    body = {
        "patient": {
            "age_years": 45,
            "sex": "male",
            "symptoms": [{"code": "hiccups", "severity": "mild"}],
        }
    }
    response = http.post("/v1/referrals", headers=clinician(), json=body)
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "patient.symptoms[0].code"
    assert "chest-pain" in response.json()["fields"][0]["expected"]


# -- production changes, integrity, audit failure ----------------------------------------


def test_archived_model_stops_and_a_promoted_one_is_hot_swapped(deployment: Deployment) -> None:
    deployment.release(seed=0)
    app = create_app(deployment.settings())
    with live_server(app) as running, httpx.Client(base_url=running.base_url) as http:
        headers = deployment.bearer(CLINICIAN)
        url = f"/v1/models/{HEART}/predict"
        first = http.post(url, headers=headers, json={"patient": HEART_PATIENT}).json()
        assert first["model"]["version"] == 1

        second = deployment.register(seed=1)
        promote(
            deployment.engine,
            HEART,
            second.version,
            evaluation=heldout("fed-heart-disease"),
            principal=REGULATOR,
            audit=deployment.audit,
        )
        swapped = http.post(url, headers=headers, json={"patient": HEART_PATIENT}).json()
        assert swapped["model"] == {"name": HEART, "version": 2, "sha256": second.artifact_sha256}
        assert swapped["predictions"][0]["probability"] != first["predictions"][0]["probability"]
        assert app.state.serving.models.cached(HEART).version == 2

        archive(deployment.engine, HEART, 2, principal=REGULATOR, audit=deployment.audit)
        stopped = http.post(url, headers=headers, json={"patient": HEART_PATIENT})
        assert stopped.status_code == 404
        assert stopped.json()["error"] == "model-not-found"
        assert app.state.serving.models.cached(HEART) is None
        assert (
            deployment.entries(action="model.predict", outcome="refused")[-1]["details"]["reason"]
            == "model-not-found"
        )
        card = http.get(f"/v1/models/{HEART}", headers=headers)
        assert card.status_code == 404


def test_tampered_artifact_is_refused(deployment: Deployment) -> None:
    deployment.release(seed=0)
    version = get_version(deployment.engine, HEART, 1, principal=ADMIN, audit=deployment.audit)
    artifact = Path(version.artifact_uri)
    with np.load(artifact) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["linear.weight"] = arrays["linear.weight"] * 2  # a still valid, different model
    with artifact.open("wb") as handle:
        np.savez(handle, **arrays)
    app = create_app(deployment.settings())
    with live_server(app) as running, httpx.Client(base_url=running.base_url) as http:
        response = http.post(
            f"/v1/models/{HEART}/predict",
            headers=deployment.bearer(CLINICIAN),
            json={"patient": HEART_PATIENT},
        )
    assert response.status_code == 503
    assert response.json()["error"] == "model-integrity"
    assert "predictions" not in response.json()
    assert str(artifact) not in response.text
    failed = deployment.entries(action="model.predict", outcome="failed")
    assert failed[-1]["details"]["reason"] == "model-integrity"


def test_tampering_after_promotion_never_reaches_a_running_service(deployment: Deployment) -> None:
    deployment.release(seed=0)
    app = create_app(deployment.settings())
    headers = deployment.bearer(CLINICIAN)
    url = f"/v1/models/{HEART}/predict"
    with live_server(app) as running, httpx.Client(base_url=running.base_url) as http:
        assert http.post(url, headers=headers, json={"patient": HEART_PATIENT}).status_code == 200
        second = deployment.register(seed=1)
        promote(
            deployment.engine,
            HEART,
            second.version,
            evaluation=heldout("fed-heart-disease"),
            principal=REGULATOR,
            audit=deployment.audit,
        )
        Path(second.artifact_uri).write_bytes(Path(second.artifact_uri).read_bytes() + b"\0")
        response = http.post(url, headers=headers, json={"patient": HEART_PATIENT})
        assert response.status_code == 503
        assert app.state.serving.models.cached(HEART) is None  # v1 is not served instead


def test_model_without_transform_does_not_serve(deployment: Deployment) -> None:
    # Since issue 13 such a version cannot be promoted (it cannot be evaluated); one
    # promoted before (or whose transform was lost) still must not serve.
    deployment.release(seed=0)
    with deployment.engine.begin() as connection:
        connection.execute(text("UPDATE registry_model_versions SET features = NULL"))
    app = create_app(deployment.settings())
    with live_server(app) as running, httpx.Client(base_url=running.base_url) as http:
        response = http.post(
            f"/v1/models/{HEART}/predict",
            headers=deployment.bearer(CLINICIAN),
            json={"patient": HEART_PATIENT},
        )
    assert response.status_code == 409
    assert "without an input transform" in response.json()["message"]


def test_audit_failure_withholds_the_prediction(deployment: Deployment) -> None:
    deployment.release(seed=0)
    app = create_app(deployment.settings())
    headers = deployment.bearer(CLINICIAN)
    url = f"/v1/models/{HEART}/predict"
    with live_server(app) as running, httpx.Client(base_url=running.base_url) as http:
        assert http.post(url, headers=headers, json={"patient": HEART_PATIENT}).status_code == 200
        with deployment.engine.begin() as connection:
            head = connection.execute(text("SELECT id, seq, entry_hash FROM audit_head")).one()
            connection.execute(text("DELETE FROM audit_head"))
        try:
            response = http.post(url, headers=headers, json={"patient": HEART_PATIENT})
            referral = http.post(
                "/v1/referrals", headers=headers, json={"patient": {"age_years": 40, "sex": "male"}}
            )
        finally:
            with deployment.engine.begin() as connection:
                connection.execute(
                    text("INSERT INTO audit_head (id, seq, entry_hash) VALUES (:id, :seq, :hash)"),
                    {"id": head[0], "seq": head[1], "hash": head[2]},
                )
        assert response.status_code == 503
        assert response.json()["error"] == "audit-unavailable"
        assert "probability" not in response.text
        assert referral.status_code == 503
        assert "specialist" not in referral.json()
        assert http.post(url, headers=headers, json={"patient": HEART_PATIENT}).status_code == 200
    assert deployment.audit.verify().ok


def test_every_answered_request_has_one_audit_entry(deployment: Deployment) -> None:
    deployment.release(seed=0)
    deployment.release(RISK, scenario="framingham-county", architecture="risk-logreg")
    app = create_app(deployment.settings())
    headers = deployment.bearer(CLINICIAN)
    before = len(deployment.entries())
    answered = 0
    with live_server(app) as running, httpx.Client(base_url=running.base_url) as http:
        for _ in range(5):
            assert (
                http.post(
                    f"/v1/models/{HEART}/predict", headers=headers, json={"patient": HEART_PATIENT}
                ).status_code
                == 200
            )
            assert (
                http.post(
                    f"/v1/models/{RISK}/predict",
                    headers=headers,
                    json={"patients": [FRAMINGHAM_PATIENT] * 3},
                ).status_code
                == 200
            )
            assert (
                http.post(
                    "/v1/referrals",
                    headers=headers,
                    json={"patient": {"age_years": 3, "sex": "female"}},
                ).status_code
                == 200
            )
            assert http.get(f"/v1/models/{HEART}", headers=headers).status_code == 200
            answered += 4
    new = deployment.entries()[before:]
    predictions = [e for e in new if e["action"] == "model.predict"]
    assert len(predictions) == 10
    assert len([e for e in new if e["action"] == "referral.create"]) == 5
    # model reads: 5 card reads + one load of each model by the cache
    assert len([e for e in new if e["action"] == "model.read"]) == 5 + 2
    assert len(new) == answered + 2
    assert all(e["outcome"] == "ok" for e in new)
    assert deployment.audit.verify().ok
