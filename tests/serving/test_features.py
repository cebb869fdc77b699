"""The input transform: published with the model, stored in the registry, applied by the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serving_support import (
    CLINICIAN,
    FRAMINGHAM_PATIENT,
    HEART,
    HEART_PATIENT,
    RESEARCHER,
    Deployment,
    make_deployment,
    publish_model,
    trained_state,
)
from sqlalchemy import text

from countyfl import models, scenarios
from countyfl.data import fed_heart_disease, framingham
from countyfl.data.schema import HeartDiseaseRecord
from countyfl.publishing import input_transform
from countyfl.registry import (
    FeatureTransform,
    PublishedModelError,
    Role,
    get_version,
    register_published,
)
from countyfl.serving import create_app
from countyfl.serving.errors import InvalidRecordError
from countyfl.serving.features import SPECS, standardize, validate_records
from countyfl.serving.schemas import FraminghamPatient, HeartDiseasePatient
from countyfl.storage import create_database_engine, upgrade
from countyfl.training.local import predict_proba

# What Deployment.release() publishes for the heart model: scenario, architecture, seed
HEART_MODEL = ("fed-heart-disease", "diagnosis-logreg", 0)


def test_heart_transform_is_the_tasks_reference_constants() -> None:
    block = input_transform("fed-heart-disease")
    assert block["schema"] == "heart-disease"
    assert block["names"] == list(fed_heart_disease.FEATURE_NAMES)
    np.testing.assert_array_equal(block["mean"], fed_heart_disease.REFERENCE_MEAN)
    np.testing.assert_array_equal(block["scale"], fed_heart_disease.REFERENCE_STD)


def _test_patients(records: list[HeartDiseaseRecord]) -> list[dict[str, object]]:
    """The held-out records of one hospital as a clinician would send them."""
    _, test_index = fed_heart_disease.split_indices(records)
    fields = set(HeartDiseasePatient.model_fields)
    return [{k: v for k, v in records[i].model_dump().items() if k in fields} for i in test_index]


def test_served_probability_is_the_models_probability_on_each_hospitals_own_test_rows(
    deployment: Deployment,
) -> None:
    # Training and serving use one transform: what the API answers for a hospital's test
    # patient is exactly what the federated model gives on that hospital's preprocessed row
    # (the per-hospital z-scores of earlier versions shifted VA Long Beach by 0.2).
    deployment.release()
    model = models.build("diagnosis-logreg", len(fed_heart_disease.FEATURE_NAMES))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in trained_state(*HEART_MODEL).items()})
    _, _, _, by_hospital = fed_heart_disease.hospital_records()
    dataset = scenarios.load("fed-heart-disease")
    app = create_app(deployment.settings())
    gaps = {}
    with TestClient(app) as client:
        for institution, records in zip(dataset.institutions, by_hospital.values(), strict=True):
            patients = _test_patients(records)
            served: list[float] = []
            for start in range(0, len(patients), 25):
                response = client.post(
                    f"/v1/models/{HEART}/predict",
                    headers=deployment.bearer(CLINICIAN),
                    json={"patients": patients[start : start + 25]},
                )
                assert response.status_code == 200, response.text
                served += [p["probability"] for p in response.json()["predictions"]]
            federated = predict_proba(model, institution.x_test)
            gaps[institution.institution_id] = float(np.max(np.abs(np.array(served) - federated)))
    app.state.serving.close()
    assert set(gaps) == {"cleveland", "hungary", "switzerland", "va-long-beach"}
    assert max(gaps.values()) < 1e-5, gaps


def test_framingham_transform_is_the_reference_scale() -> None:
    block = input_transform("framingham-county")
    assert block["schema"] == "framingham"
    assert block["names"] == list(framingham.FEATURE_NAMES)
    assert block["mean"][1] == framingham.REFERENCE_SCALE["age"][0]
    assert block["scale"][1] == framingham.REFERENCE_SCALE["age"][1]


def test_framingham_patient_fields_are_the_training_features() -> None:
    assert set(FraminghamPatient.model_fields) == set(framingham.FEATURES)


def test_heart_encoding_does_not_depend_on_the_placeholder_hospital() -> None:
    base = {**HEART_PATIENT, "hospital": "Cleveland", "diagnosis": 0}
    reference = fed_heart_disease.encode(HeartDiseaseRecord.model_validate(base))
    other = fed_heart_disease.encode(
        HeartDiseaseRecord.model_validate({**base, "hospital": "Switzerland", "diagnosis": 3})
    )
    served = SPECS["heart-disease"].encode(HeartDiseasePatient.model_validate(HEART_PATIENT))
    assert reference == other == served


def test_api_ranges_are_the_common_schema_ranges() -> None:
    for name in ("age", "resting_bp", "cholesterol", "max_heart_rate", "st_depression"):
        assert (
            HeartDiseasePatient.model_json_schema()["properties"][name]["maximum"]
            == HeartDiseaseRecord.model_json_schema(by_alias=False)["properties"][name]["maximum"]
        )


def test_standardize_applies_mean_and_scale() -> None:
    transform = FeatureTransform.model_validate(input_transform("framingham-county"))
    spec = SPECS["framingham"]
    (record,) = validate_records(spec, [FRAMINGHAM_PATIENT], ["patient"])
    z = standardize(spec, [record], transform)
    age = framingham.FEATURES.index("age")
    assert z.dtype == np.float32
    assert z[0, age] == pytest.approx((61 - 50) / 10)


def test_non_smoker_may_leave_cigarettes_out_but_a_smoker_may_not() -> None:
    spec = SPECS["framingham"]
    non_smoker = {**FRAMINGHAM_PATIENT, "current_smoker": 0}
    del non_smoker["cigarettes_per_day"]
    (record,) = validate_records(spec, [non_smoker], ["patient"])
    assert spec.encode(record)[framingham.FEATURES.index("cigarettes_per_day")] == 0.0
    smoker = {**FRAMINGHAM_PATIENT}
    del smoker["cigarettes_per_day"]
    with pytest.raises(InvalidRecordError, match="cigarettes_per_day is required"):
        validate_records(spec, [smoker], ["patient"])


def test_invalid_record_names_field_range_and_unit_but_not_the_value() -> None:
    spec = SPECS["heart-disease"]
    with pytest.raises(InvalidRecordError) as caught:
        validate_records(
            spec,
            [HEART_PATIENT, {**HEART_PATIENT, "cholesterol": 987.5}],
            ["patients[0]", "patients[1]"],
        )
    (problem,) = caught.value.problems
    assert problem.field == "patients[1].cholesterol"
    assert (problem.expected, problem.unit) == ("0 to 700", "mg/dl")
    assert "987.5" not in str(caught.value)


# -- the registry stores the transform ---------------------------------------------------


def test_register_published_keeps_the_transform(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "d")
    folder = publish_model(tmp_path / "published")
    version = register_published(
        deployment.engine, folder, principal=RESEARCHER, audit=deployment.audit
    )
    assert version.features is not None
    assert version.features.model_dump() == input_transform("fed-heart-disease")
    again = get_version(
        deployment.engine,
        version.name,
        version.version,
        principal=RESEARCHER,
        audit=deployment.audit,
    )
    assert again.features == version.features
    assert json.loads(again.model_dump_json())["features"]["schema"] == "heart-disease"


def test_folder_without_transform_registers_without_one(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "d")
    folder = publish_model(tmp_path / "published", features=False)
    version = register_published(
        deployment.engine, folder, principal=RESEARCHER, audit=deployment.audit
    )
    assert version.features is None


def test_malformed_transform_names_the_field(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "d")
    folder = publish_model(tmp_path / "published")
    manifest = json.loads((folder / "model.json").read_text())
    manifest["features"]["scale"][2] = 0.0
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishedModelError, match=r"features\.scale\.2"):
        register_published(deployment.engine, folder, principal=RESEARCHER, audit=deployment.audit)
    manifest["features"]["scale"][2] = 1.0
    manifest["features"]["scale"] = manifest["features"]["scale"][:-1]
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishedModelError, match="13 feature names but 13 means and 12 scales"):
        register_published(deployment.engine, folder, principal=RESEARCHER, audit=deployment.audit)


def test_migration_0003_keeps_old_versions_readable(tmp_path: Path) -> None:
    """A version registered at revision 0002 reads back with no transform after 0003."""
    from serving_support import ADMIN, PASSWORD, SECOND_ADMIN
    from serving_support import publish_model as publish

    from countyfl.audit import AuditLog
    from countyfl.registry import add_user, approve_user, bootstrap_admin, register_candidate

    engine = create_database_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0002_registry")
    upgrade(engine, "0002_audit_log")
    folder = publish(tmp_path / "published")
    manifest = json.loads((folder / "model.json").read_text())
    with engine.begin() as connection:
        columns = [
            row[1] for row in connection.execute(text("PRAGMA table_info(registry_model_versions)"))
        ]
        assert "features" not in columns
        connection.execute(
            text(
                "INSERT INTO registry_model_versions (name, version, stage, architecture, run_id, "
                "scenario, rounds, federated_metrics, institution_metrics, artifact_sha256, "
                "artifact_uri, registered_by, created_at) VALUES ('heart-disease-diagnosis', 1, "
                "'candidate', 'diagnosis-logreg', 'old', 'fed-heart-disease', 1, '{}', '{}', "
                f"'{manifest['artifact']['sha256']}', '{folder / 'model.npz'}', 'rita', "
                "'2026-01-01 00:00:00')"
            )
        )
    upgrade(engine)
    audit = AuditLog(engine)
    bootstrap_admin(engine, ADMIN.username, password=PASSWORD, audit=audit)
    add_user(
        engine, SECOND_ADMIN.username, Role.ADMIN, password=PASSWORD, principal=ADMIN, audit=audit
    )
    add_user(
        engine,
        RESEARCHER.username,
        Role.RESEARCHER,
        password=PASSWORD,
        principal=ADMIN,
        audit=audit,
    )
    approve_user(engine, RESEARCHER.username, principal=SECOND_ADMIN, audit=audit)
    old = get_version(engine, "heart-disease-diagnosis", 1, principal=ADMIN, audit=audit)
    assert old.features is None
    new = register_candidate(
        engine,
        name="heart-disease-diagnosis",
        architecture="diagnosis-logreg",
        run_id="new",
        scenario="fed-heart-disease",
        rounds=1,
        institutions=["cleveland"],
        federated_metrics={"auc": 0.8},
        artifact_location=folder / "model.npz",
        artifact_sha256=manifest["artifact"]["sha256"],
        features=manifest["features"],
        principal=RESEARCHER,
        audit=audit,
    )
    assert new.version == 2 and new.features is not None
    upgrade(engine)  # idempotent at head
    from alembic import command

    from countyfl.storage.database import alembic_config

    command.downgrade(alembic_config(engine), "0002_registry@0002_registry")
    with engine.connect() as connection:
        columns = [
            row[1] for row in connection.execute(text("PRAGMA table_info(registry_model_versions)"))
        ]
    assert "features" not in columns
    engine.dispose()
