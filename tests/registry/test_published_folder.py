"""Registering the folder written by ``countyfl model publish``: validation and integrity."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from registry_support import NODE, REGULATOR, RecordingSink, publish_folder
from sqlalchemy import Engine

from countyfl.registry import (
    ArtifactIntegrityError,
    PublishedModelError,
    Stage,
    get_version,
    list_versions,
    load_artifact,
    register_published,
)


def test_a_published_folder_becomes_a_candidate_with_its_lineage(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    folder = publish_folder(tmp_path / "published")
    version = register_published(engine, folder, principal=NODE, audit=sink)
    assert (version.name, version.version, version.stage) == (
        "heart-disease-diagnosis",
        1,
        Stage.CANDIDATE,
    )
    stored = get_version(engine, version.name, 1, principal=REGULATOR, audit=sink)
    assert stored.architecture == "diagnosis-logreg"
    assert (stored.run_id, stored.scenario, stored.rounds) == ("run-42", "fed-heart-disease", 15)
    assert [(i.institution, i.epsilon, i.delta) for i in stored.institutions] == [
        ("cleveland", 0.95, 0.001),
        ("hungary", 1.1, 0.001),
    ]
    assert stored.metrics.federated == {"auc": 0.84, "accuracy": 0.77}
    assert stored.metrics.per_institution["hungary"] == {"auc": 0.81}
    assert stored.published_at == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert Path(stored.artifact_uri) == (folder / "model.npz").resolve()
    assert stored.registered_by == NODE.username
    assert set(load_artifact(stored)) == {"weight", "bias"}
    assert sink.of("model.register", "ok")[-1]["details"]["run-id"] == "run-42"


def test_dp_off_and_nan_metrics_are_accepted(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    # json.dumps writes NaN as a bare NaN token, as Python's json module reads it back.
    folder = publish_folder(
        tmp_path / "published",
        privacy={},
        metrics={"federated": {"auc": float("nan")}, "per_institution": {}},
    )
    version = register_published(engine, folder, principal=NODE, audit=sink)
    assert [(i.epsilon, i.delta) for i in version.institutions] == [(None, None), (None, None)]
    assert version.metrics.federated == {"auc": None}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"rounds": "fifteen"}, "'rounds'"),
        ({"rounds": 0}, "'rounds'"),
        ({"name": "Heart Disease"}, "'name'"),
        ({"institutions": []}, "'institutions'"),
        ({"metrics": {"federated": {"auc": "high"}}}, "'metrics.federated.auc'"),
        (
            {"privacy": {"cleveland": {"epsilon": -0.5, "delta": 0.001}}},
            "'privacy.cleveland.epsilon'",
        ),
        ({"privacy": {"cleveland": {"epsilon": 1.0, "delta": 1.5}}}, "'privacy.cleveland.delta'"),
        ({"artifact": {"path": "model.npz", "sha256": "abc"}}, "'artifact.sha256'"),
        ({"created_at": "yesterday"}, "'created_at'"),
        ({"seed": 42}, "'seed'"),
        ({"privacy": {"paris": {"epsilon": 1.0, "delta": 0.001}}}, "paris"),
    ],
)
def test_a_bad_field_is_named_with_its_file(
    engine: Engine, sink: RecordingSink, tmp_path: Path, override: dict[str, Any], field: str
) -> None:
    folder = publish_folder(tmp_path / "published", **override)
    with pytest.raises(PublishedModelError) as refused:
        register_published(engine, folder, principal=NODE, audit=sink)
    message = str(refused.value)
    assert field in message
    assert str(folder / "model.json") in message
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []


def test_a_missing_field_is_named(engine: Engine, sink: RecordingSink, tmp_path: Path) -> None:
    folder = publish_folder(tmp_path / "published")
    manifest = json.loads((folder / "model.json").read_text())
    del manifest["run_id"]
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishedModelError, match="field 'run_id': Field required"):
        register_published(engine, folder, principal=NODE, audit=sink)


def test_the_artifact_must_match_its_sha256(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    folder = publish_folder(tmp_path / "published")
    (folder / "model.npz").write_bytes(b"not the published model")
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        register_published(engine, folder, principal=NODE, audit=sink)
    assert sink.last["outcome"] == "refused"
    (folder / "model.npz").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        register_published(engine, folder, principal=NODE, audit=sink)
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []


def test_the_artifact_must_lie_inside_the_folder(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    folder = publish_folder(tmp_path / "published")
    sha = json.loads((folder / "model.json").read_text())["artifact"]["sha256"]
    (tmp_path / "elsewhere.npz").write_bytes((folder / "model.npz").read_bytes())
    publish_folder(folder, artifact={"path": "../elsewhere.npz", "sha256": sha})
    with pytest.raises(PublishedModelError, match=r"'artifact\.path'.*inside the folder"):
        register_published(engine, folder, principal=NODE, audit=sink)


def test_a_folder_without_model_json_is_refused(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    with pytest.raises(PublishedModelError, match="not a folder"):
        register_published(engine, tmp_path / "nowhere", principal=NODE, audit=sink)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PublishedModelError, match=r"model\.json does not exist"):
        register_published(engine, tmp_path / "empty", principal=NODE, audit=sink)
    broken = publish_folder(tmp_path / "broken")
    (broken / "model.json").write_text("{not json")
    with pytest.raises(PublishedModelError, match="not valid JSON"):
        register_published(engine, broken, principal=NODE, audit=sink)
