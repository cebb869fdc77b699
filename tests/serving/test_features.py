"""The input transform: published with the model, stored in the registry, applied by the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving_support import (
    FRAMINGHAM_PATIENT,
    HEART_PATIENT,
    RESEARCHER,
    make_deployment,
    publish_model,
)
from sqlalchemy import text

from countyfl.data import fed_heart_disease, framingham, load_scenario
from countyfl.data.federated import standardize as per_hospital_standardize
from countyfl.data.schema import HeartDiseaseRecord
from countyfl.publishing import heart_disease_raw_splits, input_transform, pool_statistics
from countyfl.registry import (
    FeatureTransform,
    PublishedModelError,
    Role,
    get_version,
    register_published,
)
from countyfl.serving.errors import InvalidRecordError
from countyfl.serving.features import SPECS, standardize, validate_records
from countyfl.serving.schemas import FraminghamPatient, HeartDiseasePatient
from countyfl.storage import create_database_engine, upgrade


def test_pooled_statistics_equal_those_of_the_stacked_rows() -> None:
    rng = np.random.default_rng(7)
    sites = [
        rng.normal(loc, scale, size=(n, 3))
        for loc, scale, n in ((0, 1, 50), (5, 2, 7), (-3, 0.5, 120))
    ]
    mean, scale = pool_statistics(
        [len(s) for s in sites], [s.mean(axis=0) for s in sites], [s.std(axis=0) for s in sites]
    )
    stacked = np.concatenate(sites)
    np.testing.assert_allclose(mean, stacked.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scale, stacked.std(axis=0), rtol=1e-12)


def test_constant_feature_gets_scale_one() -> None:
    _, scale = pool_statistics([3, 4], [[1.0, 2.0], [1.0, 3.0]], [[0.0, 1.0], [0.0, 1.0]])
    assert scale[0] == 1.0


def test_raw_splits_are_exactly_the_rows_training_standardised() -> None:
    splits = heart_disease_raw_splits()
    for institution in load_scenario("fed-heart-disease").institutions:
        raw_train, raw_test = splits[institution.institution_id]
        x_train, x_test = per_hospital_standardize(raw_train, raw_test)
        np.testing.assert_array_equal(x_train, institution.x_train)
        np.testing.assert_array_equal(x_test, institution.x_test)


def test_heart_transform_is_the_pooled_train_statistics() -> None:
    block = input_transform("fed-heart-disease")
    trains = np.concatenate([train for train, _ in heart_disease_raw_splits().values()]).astype(
        np.float64
    )
    assert block["schema"] == "heart-disease"
    assert block["names"] == list(fed_heart_disease.FEATURE_NAMES)
    np.testing.assert_allclose(block["mean"], trains.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(block["scale"], trains.std(axis=0), rtol=1e-9)
    assert len(trains) == 200 + 171 + 30 + 85


def test_framingham_transform_is_the_reference_scale() -> None:
    block = input_transform("framingham-county")
    assert block["schema"] == "framingham"
    assert block["names"] == list(framingham.FEATURE_NAMES)
    assert block["mean"][1] == framingham.REFERENCE_SCALE["age"][0]
    assert block["scale"][1] == framingham.REFERENCE_SCALE["age"][1]


def test_pooled_scaling_differs_from_training_where_hospitals_differ() -> None:
    # What the module docstring of countyfl.publishing warns about: Switzerland's cholesterol
    # is mostly 0 ("not measured"), normal there, far below the pooled mean.
    block = input_transform("fed-heart-disease")
    column = fed_heart_disease.FEATURE_NAMES.index("cholesterol")
    swiss_train, _ = heart_disease_raw_splits()["switzerland"]
    pooled_z = (0.0 - block["mean"][column]) / block["scale"][column]
    swiss = swiss_train[:, column].astype(np.float64)
    swiss_z = (0.0 - swiss.mean()) / (swiss.std() or 1.0)
    assert pooled_z < -2.0
    assert abs(swiss_z) < 1.0


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
