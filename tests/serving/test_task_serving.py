"""A county's own task served over HTTP without code: route, OpenAPI, transform, refusals.

The task is one countyfl does not ship (tests/clinical/support.py: Framingham rows
disguised as a county's export). The referral rules name its task file; the API then
serves the task's model with a patient record built from the task (fields, units, ranges,
categories), the model's own transform, and refuses a model trained on another task.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serving_support import (
    ADMIN,
    CLINICIAN,
    REGULATOR,
    RESEARCHER,
    Deployment,
    make_deployment,
)
from web_support import csrf_of, form_values, sign_in

from countyfl import models, scenarios
from countyfl.publishing import input_transform
from countyfl.registry import (
    EvaluationData,
    evaluation_data,
    promote,
    register_published,
    set_threshold,
)
from countyfl.serving.app import create_app
from countyfl.serving.errors import ReferralConfigError
from countyfl.serving.referral import load_rules
from countyfl.serving.referral.config import default_path
from countyfl.training.local import train
from countyfl.training.plan import TrainingPlan
from tests.clinical.support import write_user_task

TASK_MODEL = "county-chd-risk"
PATIENT = {"age": 61, "sex_male": True, "total_cholesterol": 280.0, "systolic_bp": 150.0}
RULES = """
[models.county-chd-risk]
task = "task.toml"
bands = { moderate = 0.10, high = 0.20 }
specialty = "cardiology"
"""


@dataclass
class TaskWorld:
    folder: Path
    task_path: Path
    export_path: Path
    rules_path: Path
    heldout: EvaluationData
    state: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TaskWorld:
    folder = tmp_path_factory.mktemp("task-serving")
    task_path, export_path = write_user_task(folder, rows=900)
    rules_path = folder / "rules.toml"
    rules_path.write_text(
        default_path("referral-rules.toml").read_text(encoding="utf-8") + RULES, encoding="utf-8"
    )
    data = scenarios.load(str(task_path), str(export_path), 2026)
    x, y, x_test, y_test = data.pooled()
    torch.manual_seed(0)
    model = models.build("risk-logreg", data.num_features)
    plan = TrainingPlan(local_steps=300, batch_size=32, learning_rate=0.05)
    train(model, x, y, plan, torch.Generator().manual_seed(0))
    transform = input_transform(str(task_path))
    raw = x_test * np.asarray(transform["scale"]) + np.asarray(transform["mean"])
    heldout = evaluation_data(transform["names"], raw, y_test, source="county test rows")
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return TaskWorld(folder, task_path, export_path, rules_path, heldout, state)


def publish_task_model(world: TaskWorld, folder: Path, transform: dict[str, Any]) -> Path:
    """model.npz and model.json of the task's model, as ``countyfl model publish`` writes."""
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    np.savez(buffer, **world.state)
    (folder / "model.npz").write_bytes(buffer.getvalue())
    institutions = ["county-hospital", "township-1", "village-1"]
    manifest = {
        "name": TASK_MODEL,
        "model": "risk-logreg",
        "run_id": "run-task",
        "scenario": TASK_MODEL,
        "task_manifest_hash": None,
        "rounds": 2,
        "institutions": institutions,
        "privacy": {i: {"epsilon": 1.0, "delta": 1e-3} for i in institutions},
        "encryption": None,
        "metrics": {"federated": {"auc": 0.7}, "per_institution": {}},
        "artifact": {"path": "model.npz", "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()},
        "created_at": "2026-11-30T10:00:00+00:00",
        "features": transform,
    }
    (folder / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def release(deployment: Deployment, world: TaskWorld, transform: dict[str, Any]) -> int:
    folder = publish_task_model(
        world, deployment.root / f"published-{time.monotonic_ns()}", transform
    )
    version = register_published(
        deployment.engine, folder, principal=RESEARCHER, audit=deployment.audit
    )
    set_threshold(
        deployment.engine, TASK_MODEL, "auc", 0.5, principal=ADMIN, audit=deployment.audit
    )
    promote(
        deployment.engine,
        TASK_MODEL,
        version.version,
        evaluation=world.heldout,
        principal=REGULATOR,
        audit=deployment.audit,
    )
    return version.version


@pytest.fixture
def served(world: TaskWorld, tmp_path: Path) -> Iterator[tuple[Deployment, TestClient]]:
    deployment = make_deployment(tmp_path / "registry")
    app = create_app(deployment.settings(referral_rules_file=world.rules_path))
    with TestClient(app) as client:
        yield deployment, client


def test_the_task_route_and_its_openapi_schema_come_from_the_task_file(
    served: tuple[Deployment, TestClient],
) -> None:
    _, client = served
    spec = client.get("/openapi.json").json()
    route = spec["paths"][f"/v1/models/{TASK_MODEL}/predict"]["post"]
    body = route["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert body == "CountyChdRiskPredictionCreate"
    patient = spec["components"]["schemas"]["CountyChdRiskPatient"]
    props = patient["properties"]
    assert set(props) == {"age", "sex_male", "total_cholesterol", "systolic_bp"}
    assert props["systolic_bp"]["unit"] == "mmHg"
    assert (props["systolic_bp"]["minimum"], props["systolic_bp"]["maximum"]) == (70, 300)
    assert props["sex_male"]["type"] == "boolean"
    # Cholesterol is filled by the task when missing, so the API does not require it.
    assert set(patient["required"]) == {"age", "sex_male", "systolic_bp"}
    # The built-in models are still served beside it.
    assert "/v1/models/heart-disease-diagnosis/predict" in spec["paths"]


def test_a_prediction_uses_the_models_own_task_transform(
    world: TaskWorld, served: tuple[Deployment, TestClient]
) -> None:
    deployment, client = served
    version = release(deployment, world, input_transform(str(world.task_path)))
    headers = deployment.bearer(CLINICIAN)
    reply = client.post(
        f"/v1/models/{TASK_MODEL}/predict", json={"patient": PATIENT}, headers=headers
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["model"]["version"] == version
    # The oracle: the trained network on the task's reference scaling of the same record.
    model = models.build("risk-logreg", 4)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in world.state.items()})
    x = torch.tensor([[(61 - 50) / 10, (1 - 0.5) / 0.5, (280 - 235) / 45, (150 - 130) / 22]])
    expected = float(torch.sigmoid(model(x)).item())
    assert answer["predictions"][0]["probability"] == pytest.approx(expected, abs=1e-6)
    fields = {item["field"] for item in answer["predictions"][0]["top_features"]}
    assert fields <= {"age", "sex_male", "total_cholesterol", "systolic_bp"}

    # A missing cholesterol is filled with the task's fixed value (235 mg/dL): centre 0.
    reply = client.post(
        f"/v1/models/{TASK_MODEL}/predict",
        json={"patient": {k: v for k, v in PATIENT.items() if k != "total_cholesterol"}},
        headers=headers,
    )
    x[0, 2] = 0.0
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0]["probability"] == pytest.approx(
        float(torch.sigmoid(model(x)).item()), abs=1e-6
    )

    # Out of the task's range: a 422 naming the field, the range and the unit.
    reply = client.post(
        f"/v1/models/{TASK_MODEL}/predict",
        json={"patient": {**PATIENT, "total_cholesterol": 7.2}},
        headers=headers,
    )
    assert reply.status_code == 422
    problem = reply.json()["fields"][0]
    assert problem["field"] == "patient.total_cholesterol"
    assert problem["unit"] == "mg/dL" and problem["expected"] == "80.0 to 700.0"

    # The model card says what the model is for and what it reads, from its task.
    card = client.get(f"/v1/models/{TASK_MODEL}", headers=headers).json()
    task = card["features"]["task"]
    assert card["serves_predictions"] is True
    assert task["intended_use"] == "Test task: a data set countyfl does not ship"
    assert task["label"]["column"] == "chd"
    assert [f["unit"] for f in task["features"]] == ["year", None, "mg/dL", "mmHg"]

    # The referral advice weighs the task model's risk too.
    reply = client.post(
        "/v1/referrals",
        json={
            "patient": {"age_years": 61, "sex": "male"},
            "risk": {"model": TASK_MODEL, "patient": PATIENT},
        },
        headers=headers,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["risk"]["model"]["name"] == TASK_MODEL


def test_a_model_trained_on_another_task_is_refused_with_a_clear_409(
    world: TaskWorld, served: tuple[Deployment, TestClient]
) -> None:
    deployment, client = served
    transform = input_transform(str(world.task_path))
    # The same inputs, but systolic blood pressure in kPa: the records would mean another thing.
    features = transform["task"]["features"]
    features[3] = {**features[3], "unit": "kPa", "range": [9.0, 40.0]}
    release(deployment, world, transform)
    reply = client.post(
        f"/v1/models/{TASK_MODEL}/predict",
        json={"patient": PATIENT},
        headers=deployment.bearer(CLINICIAN),
    )
    assert reply.status_code == 409, reply.text
    message = reply.json()["message"]
    assert "was not trained on the task" in message
    assert "'systolic-bp' has unit 'kPa' in the model, 'mmHg' in the task file" in message
    refused = deployment.entries(action="model.predict", outcome="refused")
    assert refused and refused[-1]["details"]["reason"] == "model-not-serving"


def test_rules_naming_a_bad_task_file_fail_at_start_naming_file_and_entry(
    world: TaskWorld, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    text = world.rules_path.read_text(encoding="utf-8")
    rules.write_text(text.replace('task = "task.toml"', 'task = "missing.toml"'), encoding="utf-8")
    with pytest.raises(ReferralConfigError) as error:
        load_rules(rules)
    assert str(rules) in str(error.value)
    assert "[models.county-chd-risk], field 'task'" in str(error.value)
    assert "missing.toml" in str(error.value)

    both = text.replace('task = "task.toml"', 'task = "task.toml"\nschema = "framingham"')
    rules.write_text(both, encoding="utf-8")
    with pytest.raises(ReferralConfigError, match=r"either schema .* or task"):
        load_rules(rules)


def test_the_clinicians_form_of_a_task_model_is_generated_from_the_task(
    world: TaskWorld, served: tuple[Deployment, TestClient]
) -> None:
    deployment, client = served
    release(deployment, world, input_transform(str(world.task_path)))
    api = client.post(
        f"/v1/models/{TASK_MODEL}/predict",
        json={"patient": PATIENT},
        headers=deployment.bearer(CLINICIAN),
    ).json()
    sign_in(client, CLINICIAN.username)
    form = f"/console/clinic/{TASK_MODEL}"
    page = client.get(form).text
    for name in PATIENT:
        assert f'name="{name}"' in page
    assert re.search(r'name="systolic_bp"[^>]*min="70.0"[^>]*max="300.0"', page, re.S)
    assert "mmHg" in page
    response = client.post(
        form,
        data={
            "csrf": csrf_of(page),
            "do": "predict",
            "purpose": "treatment",
            **form_values(PATIENT),
        },
    )
    assert response.status_code == 200, response.text
    shown = re.search(r'id="probability">(\d+)%', response.text)
    expected = api["predictions"][0]["probability"]
    assert shown is not None and int(shown.group(1)) == round(expected * 100)
