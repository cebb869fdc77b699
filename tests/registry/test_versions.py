"""Model versions on a real database: lineage, promotion gates, archival, artifact integrity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from registry_support import (
    ADMIN,
    CLINICIAN,
    INSTITUTIONS,
    NODE,
    REGULATOR,
    RESEARCHER,
    SECOND_ADMIN,
    SECOND_REGULATOR,
    RecordingSink,
    heldout,
    lineage,
    seed_users,
)
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError

from countyfl.registry import (
    ArtifactIntegrityError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    Principal,
    Role,
    Stage,
    StageChangeRefusedError,
    approve_user,
    archive,
    get_production,
    get_version,
    list_versions,
    load_artifact,
    promote,
    read_artifact,
    register_candidate,
    set_role,
    set_threshold,
)
from countyfl.registry.tables import ModelVersionRow
from countyfl.storage import session_factory

NAME = "heart-disease-diagnosis"

pytestmark = pytest.mark.usefixtures("people")


def _register(
    engine: Engine, sink: RecordingSink, folder: Path, *, auc: float = 0.82, seed: int = 0
) -> int:
    version = register_candidate(
        engine, **lineage(folder, auc=auc, seed=seed), principal=RESEARCHER, audit=sink
    )
    return version.version


def test_registration_keeps_full_lineage(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    first = register_candidate(engine, **lineage(tmp_path), principal=NODE, audit=sink)
    second = register_candidate(
        engine, **lineage(tmp_path, seed=1), principal=RESEARCHER, audit=sink
    )
    other = register_candidate(
        engine, **lineage(tmp_path, name="stroke-risk"), principal=RESEARCHER, audit=sink
    )
    assert (first.version, second.version, other.version) == (1, 2, 1)

    stored = get_version(engine, NAME, 1, principal=REGULATOR, audit=sink)
    assert stored.stage is Stage.CANDIDATE
    assert stored.registered_by == NODE.username
    assert stored.architecture == "diagnosis-logreg"
    assert (stored.run_id, stored.scenario, stored.rounds) == ("run-0", "framingham-county", 5)
    assert stored.task_manifest_hash == "ab" * 32
    assert [item.institution for item in stored.institutions] == INSTITUTIONS
    assert [item.epsilon for item in stored.institutions] == [0.9, 1.4, 2.5]
    assert {item.delta for item in stored.institutions} == {1e-3}
    assert stored.encryption == {"scheme": "ckks", "poly-modulus-degree": 8192}
    assert stored.metrics.federated == {"auc": 0.82, "accuracy": 0.74}
    # An undefined metric (NaN) is stored as null: PostgreSQL's JSON cannot hold NaN.
    assert stored.metrics.per_institution["village-1"] == {"auc": None}
    assert Path(stored.artifact_uri).is_absolute()
    assert [(h.from_stage, h.to_stage) for h in stored.history] == [(None, Stage.CANDIDATE)]
    assert stored.history[0].changed_by == NODE.username

    registered = sink.of("model.register", "ok")
    assert [entry["target"] for entry in registered] == [
        f"model:{NAME}:v1",
        f"model:{NAME}:v2",
        "model:stroke-risk:v1",
    ]
    assert registered[0]["actor"] == NODE.username
    assert registered[0]["details"]["artifact-sha256"] == first.artifact_sha256


def test_registration_without_privacy_stores_null_epsilon(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    arguments = lineage(tmp_path) | {"privacy": None, "encryption": None}
    version = register_candidate(engine, **arguments, principal=RESEARCHER, audit=sink)
    assert [(item.epsilon, item.delta) for item in version.institutions] == [(None, None)] * 3
    assert version.encryption is None


def _county_of(size: int) -> dict[str, Any]:
    names = ["county-hospital", *(f"village-{i:04d}" for i in range(1, size))]
    return {
        "institutions": names,
        "institution_metrics": {name: {"auc": 0.7} for name in names},
        "privacy": {name: {"epsilon": 1.0, "delta": 1e-3} for name in names},
    }


def test_a_county_of_1024_institutions_is_registered_whole(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    version = register_candidate(
        engine, **(lineage(tmp_path) | _county_of(1024)), principal=RESEARCHER, audit=sink
    )
    stored = get_version(engine, NAME, version.version, principal=REGULATOR, audit=sink)
    assert len(stored.institutions) == 1024
    assert stored.institutions[-1].institution == "village-1023"
    assert {item.epsilon for item in stored.institutions} == {1.0}


def test_a_lineage_beyond_the_institution_cap_is_refused(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match="institutions"):
        register_candidate(
            engine, **(lineage(tmp_path) | _county_of(4097)), principal=RESEARCHER, audit=sink
        )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"name": "Heart Disease"}, "name"),
        ({"artifact_sha256": "not-a-hash"}, "artifact_sha256"),
        ({"privacy": {"elsewhere": {"epsilon": 1.0, "delta": 1e-3}}}, "elsewhere"),
        ({"privacy": {"township-1": {"epsilon": -1.0, "delta": 1e-3}}}, "epsilon"),
    ],
)
def test_registration_names_the_bad_field(
    engine: Engine, sink: RecordingSink, tmp_path: Path, change: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInputError, match=field):
        register_candidate(engine, **(lineage(tmp_path) | change), principal=RESEARCHER, audit=sink)
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []


def test_registration_refuses_an_artifact_that_does_not_match(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    arguments = lineage(tmp_path) | {"artifact_sha256": "0" * 64}
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        register_candidate(engine, **arguments, principal=RESEARCHER, audit=sink)
    assert sink.last["action"] == "model.register"
    assert sink.last["outcome"] == "refused"
    assert sink.last["details"]["reason"] == "artifact-integrity"
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []


def test_promotion_without_thresholds_says_how_to_set_them(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    version = _register(engine, sink, tmp_path)
    with pytest.raises(StageChangeRefusedError, match=f"countyfl registry threshold {NAME}"):
        promote(engine, NAME, version, evaluation=heldout(), principal=REGULATOR, audit=sink)
    assert sink.last["outcome"] == "refused"
    assert sink.last["details"]["reason"] == "no-thresholds"
    assert get_version(engine, NAME, version, principal=REGULATOR, audit=sink).stage is (
        Stage.CANDIDATE
    )


def test_promotion_refuses_unmet_thresholds(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    set_threshold(engine, NAME, "accuracy", 0.7, principal=ADMIN, audit=sink)
    # The run reports an AUC of 0.99; on held-out data whose labels are coin tosses the
    # model does no better than chance, and that is what counts.
    version = _register(engine, sink, tmp_path, auc=0.99)
    noise = heldout(flip=0.5)
    with pytest.raises(StageChangeRefusedError, match=r"auc = 0\.\d+ is below the minimum 0\.8"):
        promote(engine, NAME, version, evaluation=noise, principal=REGULATOR, audit=sink)
    refused = sink.of("model.promote", "refused")[-1]["details"]
    assert "auc" in refused["unmet"]
    assert refused["data-sha256"] == noise.sha256 and refused["rows"] == 200
    assert refused["measured"]["auc"] < 0.8
    assert get_version(engine, NAME, version, principal=REGULATOR, audit=sink).stage is (
        Stage.CANDIDATE
    )

    # Thresholds name metrics the registry measures, and ask for better than chance.
    with pytest.raises(InvalidInputError, match="accuracy or auc"):
        set_threshold(engine, NAME, "brier-skill", 0.9, principal=ADMIN, audit=sink)
    for minimum in (0.0, 0.49, 1.01, float("nan")):
        with pytest.raises(InvalidInputError, match=r"from 0\.5"):
            set_threshold(engine, NAME, "auc", minimum, principal=ADMIN, audit=sink)

    promoted = promote(engine, NAME, version, evaluation=heldout(), principal=REGULATOR, audit=sink)
    assert promoted.evaluation is not None
    assert promoted.evaluation.metrics["auc"] > 0.8
    assert promoted.evaluation.data_sha256 == heldout().sha256
    assert promoted.evaluation.evaluated_by == REGULATOR.username
    details = sink.of("model.promote", "ok")[-1]["details"]
    assert details["measured"]["auc"] == promoted.evaluation.metrics["auc"]
    assert details["reported"]["auc"] == 0.99


def test_whoever_registered_a_version_cannot_promote_it(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    # Dana registered as a researcher and has since been made a regulator (by one admin,
    # approved by another): the rule is about the person, not the role.
    dana_researcher = Principal("dana", Role.RESEARCHER)
    dana_regulator = Principal("dana", Role.REGULATOR)
    seed_users(engine, dana_researcher)
    version = register_candidate(
        engine, **lineage(tmp_path), principal=dana_researcher, audit=sink
    ).version
    set_role(engine, "dana", Role.REGULATOR, principal=ADMIN, audit=sink)
    approve_user(engine, "dana", principal=SECOND_ADMIN, audit=sink)
    with pytest.raises(StageChangeRefusedError, match="second person"):
        promote(engine, NAME, version, evaluation=heldout(), principal=dana_regulator, audit=sink)
    assert sink.last["details"]["reason"] == "second-person"
    assert sink.last["actor"] == "dana"

    promoted = promote(
        engine,
        NAME,
        version,
        evaluation=heldout(),
        principal=REGULATOR,
        audit=sink,
        reason="reviewed",
    )
    assert promoted.stage is Stage.PRODUCTION


def test_promotion_by_a_second_person_archives_the_previous_production(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    first = _register(engine, sink, tmp_path, auc=0.81)
    second = _register(engine, sink, tmp_path, auc=0.86, seed=1)

    promote(
        engine,
        NAME,
        first,
        evaluation=heldout(),
        principal=REGULATOR,
        audit=sink,
        reason="first release",
    )
    assert get_production(engine, NAME, principal=CLINICIAN, audit=sink).version == first

    promoted = promote(
        engine,
        NAME,
        second,
        evaluation=heldout(1),
        principal=SECOND_REGULATOR,
        audit=sink,
        reason="better auc",
    )
    assert promoted.stage is Stage.PRODUCTION
    assert [(h.from_stage, h.to_stage, h.changed_by, h.reason) for h in promoted.history] == [
        (None, Stage.CANDIDATE, RESEARCHER.username, "registered from run run-1"),
        (Stage.CANDIDATE, Stage.PRODUCTION, SECOND_REGULATOR.username, "better auc"),
    ]
    old = get_version(engine, NAME, first, principal=REGULATOR, audit=sink)
    assert old.stage is Stage.ARCHIVED
    assert old.history[-1].from_stage is Stage.PRODUCTION
    assert old.history[-1].reason == f"replaced by v{second}"
    assert get_production(engine, NAME, principal=CLINICIAN, audit=sink).version == second

    archived = sink.of("model.archive", "ok")
    assert [entry["target"] for entry in archived] == [f"model:{NAME}:v{first}"]
    promoted_entries = sink.of("model.promote", "ok")
    assert [entry["target"] for entry in promoted_entries] == [
        f"model:{NAME}:v{first}",
        f"model:{NAME}:v{second}",
    ]
    assert promoted_entries[-1]["details"]["replaces"] == first

    with pytest.raises(StageChangeRefusedError, match="archived; only a candidate"):
        promote(engine, NAME, first, evaluation=heldout(), principal=REGULATOR, audit=sink)


def test_an_older_candidate_can_replace_a_newer_production_version(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    # The two rows are updated newer-first here, the reverse of the test above, so the
    # one-production-per-name index is passed in both orders.
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    older = _register(engine, sink, tmp_path)
    newer = _register(engine, sink, tmp_path, seed=1)
    promote(engine, NAME, newer, evaluation=heldout(1), principal=REGULATOR, audit=sink)
    promote(
        engine,
        NAME,
        older,
        evaluation=heldout(),
        principal=REGULATOR,
        audit=sink,
        reason="newer one regressed",
    )
    stages = {v.version: v.stage for v in list_versions(engine, principal=REGULATOR, audit=sink)}
    assert stages == {older: Stage.PRODUCTION, newer: Stage.ARCHIVED}


def test_the_database_holds_one_production_version_per_name(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    first = _register(engine, sink, tmp_path)
    second = _register(engine, sink, tmp_path, seed=1)
    promote(engine, NAME, first, evaluation=heldout(), principal=REGULATOR, audit=sink)
    with session_factory(engine)() as session, pytest.raises(IntegrityError):
        session.execute(
            update(ModelVersionRow)
            .where(ModelVersionRow.name == NAME, ModelVersionRow.version == second)
            .values(stage="production")
        )
        session.commit()


def test_archive_moves_candidates_and_production_and_stops_there(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    candidate = _register(engine, sink, tmp_path)
    live = _register(engine, sink, tmp_path, seed=1)
    promote(engine, NAME, live, evaluation=heldout(1), principal=REGULATOR, audit=sink)

    assert archive(engine, NAME, candidate, principal=REGULATOR, audit=sink).stage is (
        Stage.ARCHIVED
    )
    withdrawn = archive(engine, NAME, live, principal=ADMIN, audit=sink, reason="recall")
    assert withdrawn.history[-1].from_stage is Stage.PRODUCTION
    assert withdrawn.history[-1].reason == "recall"
    with pytest.raises(NotFoundError, match="no production version"):
        get_production(engine, NAME, principal=CLINICIAN, audit=sink)

    with pytest.raises(StageChangeRefusedError, match="archived already"):
        archive(engine, NAME, live, principal=REGULATOR, audit=sink)
    assert sink.last["outcome"] == "refused"
    with pytest.raises(NotFoundError, match="no version 9"):
        archive(engine, NAME, 9, principal=REGULATOR, audit=sink)


def test_clinicians_see_production_versions_only(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    live = _register(engine, sink, tmp_path)
    candidate = _register(engine, sink, tmp_path, seed=1)
    promote(engine, NAME, live, evaluation=heldout(), principal=REGULATOR, audit=sink)

    listed = list_versions(engine, principal=CLINICIAN, audit=sink)
    assert [(v.version, v.stage) for v in listed] == [(live, Stage.PRODUCTION)]
    everything = list_versions(engine, principal=RESEARCHER, audit=sink)
    assert [v.version for v in everything] == [live, candidate]
    with pytest.raises(PermissionDeniedError, match=r"model\.read-any-stage"):
        list_versions(engine, stage=Stage.CANDIDATE, principal=CLINICIAN, audit=sink)
    # To a clinician an unreleased version does not exist: answered as a missing one.
    with pytest.raises(NotFoundError) as unreleased:
        get_version(engine, NAME, candidate, principal=CLINICIAN, audit=sink)
    assert sink.last["outcome"] == "refused"
    assert sink.last["details"] == {"reason": "not-released"}
    with pytest.raises(NotFoundError) as missing:
        get_version(engine, NAME, 77, principal=CLINICIAN, audit=sink)
    assert str(unreleased.value).replace(str(candidate), "N") == str(missing.value).replace(
        "77", "N"
    )
    assert get_version(engine, NAME, principal=CLINICIAN, audit=sink).version == live
    # Without a version number, a reader of every stage gets production too, not the newest.
    assert get_version(engine, NAME, principal=RESEARCHER, audit=sink).version == live


def test_load_artifact_checks_the_sha256_on_every_load(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    _register(engine, sink, tmp_path)
    version = get_version(engine, NAME, 1, principal=RESEARCHER, audit=sink)
    state = load_artifact(version)
    assert set(state) == {"linear.weight", "linear.bias"}
    assert state["linear.weight"].shape == (1, 3)

    path = Path(version.artifact_uri)
    original = path.read_bytes()
    with np.load(path) as archive_file:
        tampered = {key: archive_file[key] for key in archive_file.files}
    tampered["linear.bias"] = tampered["linear.bias"] + 1.0
    with path.open("wb") as stream:
        np.savez(stream, **tampered)
    with pytest.raises(ArtifactIntegrityError, match="was changed or replaced"):
        load_artifact(version)

    path.write_bytes(original)
    assert read_artifact(version) == original
    path.unlink()
    with pytest.raises(ArtifactIntegrityError, match="is missing"):
        load_artifact(version)


def test_a_change_is_not_made_when_its_audit_entry_cannot_be_written(
    engine: Engine, tmp_path: Path
) -> None:
    class FailingOn(RecordingSink):
        def __init__(self, action: str) -> None:
            super().__init__()
            self.action = action

        def append(self, **entry: object) -> dict[str, object]:  # type: ignore[override]
            if entry["action"] == self.action and entry["outcome"] == "ok":
                raise OSError("audit disk full")
            return super().append(**entry)  # type: ignore[arg-type]

    sink = FailingOn("model.promote")
    set_threshold(engine, NAME, "auc", 0.8, principal=ADMIN, audit=sink)
    version = _register(engine, sink, tmp_path)
    with pytest.raises(OSError, match="audit disk full"):
        promote(engine, NAME, version, evaluation=heldout(), principal=REGULATOR, audit=sink)
    assert get_version(engine, NAME, version, principal=REGULATOR, audit=sink).stage is (
        Stage.CANDIDATE
    )

    with pytest.raises(OSError, match="audit disk full"):
        register_candidate(
            engine, **lineage(tmp_path), principal=RESEARCHER, audit=FailingOn("model.register")
        )
    assert len(list_versions(engine, principal=REGULATOR, audit=sink)) == 1
