"""Registering the folder written by ``countyfl model publish``: validation and integrity."""

from __future__ import annotations

import hashlib
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

pytestmark = pytest.mark.usefixtures("people")


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
    assert set(load_artifact(stored)) == {"linear.weight", "linear.bias"}
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


def _outside(tmp_path: Path, folder: Path, target: Path) -> None:
    """Replace the folder's model.npz by a symbolic link to ``target`` (outside it)."""
    (folder / "model.npz").unlink()
    (folder / "model.npz").symlink_to(target)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["artifact"]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(manifest))


def test_an_artifact_linked_to_a_file_outside_the_folder_is_refused(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    """Finding 9: a link to /etc/passwd was registered with its sha256."""
    folder = publish_folder(tmp_path / "published")
    _outside(tmp_path, folder, Path("/etc/passwd"))
    with pytest.raises(PublishedModelError, match="symbolic link"):
        register_published(engine, folder, principal=NODE, audit=sink)
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []


def test_a_linked_outside_model_is_refused_and_so_is_a_linked_folder(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    """Finding 9: an outside .npz behind a link registered, and then served."""
    outside = publish_folder(tmp_path / "outside")
    folder = publish_folder(tmp_path / "published")
    _outside(tmp_path, folder, outside / "model.npz")
    with pytest.raises(PublishedModelError, match="symbolic link"):
        register_published(engine, folder, principal=NODE, audit=sink)
    # A link anywhere on the way: artifact.path "sub/model.npz" with sub -> outside.
    (folder / "sub").symlink_to(outside)
    sha = json.loads((outside / "model.json").read_text())["artifact"]["sha256"]
    publish_folder(folder, artifact={"path": "sub/model.npz", "sha256": sha})
    with pytest.raises(PublishedModelError, match="symbolic link"):
        register_published(engine, folder, principal=NODE, audit=sink)
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []


def test_an_artifact_swapped_for_a_link_after_registration_is_not_read(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    folder = publish_folder(tmp_path / "published")
    version = register_published(engine, folder, principal=NODE, audit=sink)
    copy = tmp_path / "copy.npz"
    copy.write_bytes((folder / "model.npz").read_bytes())
    (folder / "model.npz").unlink()
    (folder / "model.npz").symlink_to(copy)  # same bytes, same sha256: still refused
    with pytest.raises(ArtifactIntegrityError, match="symbolic link"):
        load_artifact(version)


def test_lineage_nested_deeply_or_oversized_is_refused(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    """Finding 4: a lineage field nested 900 deep took the catalogue down."""
    nested: Any = "x"
    for _ in range(900):
        nested = {"k": nested}
    folder = publish_folder(tmp_path / "deep")
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, "encryption": {"scheme": nested}}))
    with pytest.raises(PublishedModelError, match=r"'encryption\.scheme"):
        register_published(engine, folder, principal=NODE, audit=sink)
    deeper = publish_folder(tmp_path / "deeper")
    (deeper / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PublishedModelError, match=r"nests its JSON too deeply"):
        register_published(engine, deeper, principal=NODE, audit=sink)
    big = publish_folder(tmp_path / "big", scenario="s" * 2_000_000)
    with pytest.raises(PublishedModelError, match="larger than 1048576 bytes"):
        register_published(engine, big, principal=NODE, audit=sink)
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []
