"""A model is judged by what it is, not by what its lineage says (issue 13, finding 1).

Registration loads the artifact and refuses non-finite or absurd weights and transforms;
promotion measures the thresholded metrics itself, on held-out data the promoter supplies.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from registry_support import (
    ADMIN,
    FEATURES,
    REGULATOR,
    RESEARCHER,
    RecordingSink,
    heldout,
    lineage,
    publish_folder,
    write_artifact,
)
from sqlalchemy import Engine

from countyfl.registry import (
    EvaluationDataError,
    InvalidInputError,
    Stage,
    UnsafeModelError,
    get_version,
    list_versions,
    promote,
    read_evaluation_csv,
    register_candidate,
    register_published,
    set_threshold,
)
from countyfl.registry.evaluation import to_csv

NAME = "heart-disease-diagnosis"

pytestmark = pytest.mark.usefixtures("people")


@pytest.mark.parametrize(
    ("weight", "why"),
    [
        (np.full((1, 3), np.nan, dtype=np.float32), "non-finite"),
        (np.array([[1.0, np.inf, 0.0]], dtype=np.float32), "non-finite"),
        (np.array([[1.0, 2e7, 0.0]], dtype=np.float32), "beyond"),
        (np.ones((1, 5), dtype=np.float32), "do not fit diagnosis-logreg with 3 features"),
        (np.array([["a", "b", "c"]]), "not numbers"),
    ],
)
def test_a_broken_model_that_claims_099_is_refused_at_registration(
    engine: Engine, sink: RecordingSink, tmp_path: Path, weight: np.ndarray, why: str
) -> None:
    arguments = lineage(tmp_path) | {"federated_metrics": {"auc": 0.99, "accuracy": 0.99}}
    artifact = Path(arguments["artifact_location"])
    arguments["artifact_sha256"] = write_artifact(artifact, **{"linear.weight": weight})
    with pytest.raises(UnsafeModelError, match=why):
        register_candidate(engine, **arguments, principal=RESEARCHER, audit=sink)
    assert sink.last["outcome"] == "refused"
    assert sink.last["details"]["reason"] == "unsafe-model"
    assert list_versions(engine, principal=REGULATOR, audit=sink) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scale": [1e-300, 18.0, 50.0]}, "scale"),
        ({"scale": [0.0, 18.0, 50.0]}, "scale"),
        ({"mean": [float("nan"), 132.0, 220.0]}, "mean"),
        ({"mean": [1e300, 132.0, 220.0]}, "mean"),
    ],
)
def test_a_transform_that_breaks_inputs_is_refused(
    engine: Engine, sink: RecordingSink, tmp_path: Path, change: dict[str, object], field: str
) -> None:
    arguments = lineage(tmp_path) | {"features": FEATURES | change}
    with pytest.raises(InvalidInputError, match=f"features.{field}"):
        register_candidate(engine, **arguments, principal=RESEARCHER, audit=sink)


def test_a_published_folder_with_nan_weights_is_refused(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    folder = publish_folder(tmp_path / "published")
    sha = write_artifact(
        folder / "model.npz", **{"linear.weight": np.full((1, 3), np.nan, dtype=np.float32)}
    )
    manifest = json.loads((folder / "model.json").read_text())
    manifest["artifact"]["sha256"] = sha
    manifest["metrics"]["federated"] = {"auc": 0.99, "accuracy": 0.99}
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafeModelError, match="non-finite"):
        register_published(engine, folder, principal=RESEARCHER, audit=sink)


def test_promotion_is_judged_on_measured_metrics_not_reported_ones(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.75, principal=ADMIN, audit=sink)
    version = register_candidate(
        engine,
        **(lineage(tmp_path) | {"federated_metrics": {"auc": 0.99}}),
        principal=RESEARCHER,
        audit=sink,
    ).version
    with pytest.raises(Exception, match="below the minimum"):
        promote(
            engine, NAME, version, evaluation=heldout(flip=0.5), principal=REGULATOR, audit=sink
        )
    promoted = promote(engine, NAME, version, evaluation=heldout(), principal=REGULATOR, audit=sink)
    assert promoted.stage is Stage.PRODUCTION
    stored = get_version(engine, NAME, version, principal=REGULATOR, audit=sink)
    assert stored.evaluation is not None and stored.evaluation.rows == 200
    assert stored.metrics.federated["auc"] == 0.99  # what the run said, kept as reported


def test_evaluation_data_must_be_the_models_features(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    set_threshold(engine, NAME, "auc", 0.75, principal=ADMIN, audit=sink)
    version = register_candidate(
        engine, **lineage(tmp_path), principal=RESEARCHER, audit=sink
    ).version
    data = heldout()
    wrong = type(data)(("age", "resting-bp", "glucose"), data.features, data.labels, "x", "w")
    with pytest.raises(EvaluationDataError, match=r"missing columns \['cholesterol'\]"):
        promote(engine, NAME, version, evaluation=wrong, principal=REGULATOR, audit=sink)
    assert sink.last["details"]["reason"] == "evaluation-data"


def test_evaluation_csv_round_trips_and_its_sha256_is_the_files(tmp_path: Path) -> None:
    data = heldout()
    path = tmp_path / "heldout.csv"
    path.write_text(to_csv(data.names, data.features, data.labels))
    read = read_evaluation_csv(path)
    assert read.names == data.names and read.rows == 200
    assert np.allclose(read.features, data.features)
    assert read.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == data.sha256


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("age,resting-bp,cholesterol\n1,2,3\n", "'label'"),
        ("age,label\n" + "50,1\n" * 40, "0 with label 0"),
        ("age,label\n" + "50,1\n50,0\n" * 5, "10 rows"),
        ("age,label\n" + "50,1\n50,0\n" * 20 + "x,1\n", r":42: column 'age' is not a number"),
        ("age,label\n" + "50,1\n50,0\n" * 20 + "nan,1\n", "not a finite number"),
        ("age,label\n" + "50,1\n50,0\n" * 20 + "50,2\n", "must be 0 or 1"),
        ("age,label\n" + "50,1\n50,0\n" * 20 + "50\n", "1 values for 2 columns"),
    ],
)
def test_bad_evaluation_csv_is_refused_naming_file_row_and_column(
    tmp_path: Path, text: str, why: str
) -> None:
    path = tmp_path / "heldout.csv"
    path.write_text(text)
    with pytest.raises(EvaluationDataError, match=why):
        read_evaluation_csv(path)
