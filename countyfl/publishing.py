"""Publishing: a key holder turns a finished run's final aggregate into a model artifact.

The county node ends a CKKS run holding Enc(sum n_i w_i) and sum n_i, which it cannot read.
A key holder (an institution, or the county's key custodian, never the aggregator) runs
``countyfl model publish RUN_DIR``: the aggregate is decrypted with the institutions'
secret context and written as ``model.npz`` beside ``model.json``, the metadata the
registry reads (run, rounds, institutions, per-institution epsilon/delta, HE parameters,
metrics, and the artifact's sha256). A plaintext run is published the same way, without a
key. Nothing here needs Flower.

``model.json`` also holds the model's input transform (``features``), because a model can
only serve if the API turns a patient record into the same numbers training did. It is
the task's fixed reference constants (:data:`countyfl.data.fed_heart_disease.REFERENCE_SCALE`,
:data:`countyfl.data.framingham.REFERENCE_SCALE`), exactly what every institution trained
with: the transform is a declaration of the task, never a statistic of anyone's data, so
publishing releases nothing about the institutions' rows beyond the DP-trained model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from countyfl import models, protocol, scenarios
from countyfl.errors import CountyflError, describe_validation_error

# The published folder's file names are defined once, by the registry that reads it.
from countyfl.registry.published import ARTIFACT_FILE, METADATA_FILE, PublishedModel
from countyfl.runs import (
    CALIBRATION_AGGREGATE_FILE,
    FINAL_AGGREGATE_FILE,
    FINAL_MODEL_FILE,
    HISTORY_FILE,
    RUN_FILE,
    CalibrationRecord,
    FederationHistory,
    RunFolderError,
    RunRecord,
)

PUBLISHED_DIR = "published"
# Metrics averaged over institutions (weighted by test examples) into the federated figure

FEDERATED_METRICS = (protocol.ACCURACY, protocol.AUC, protocol.BRIER, protocol.ECE, protocol.LOSS)


class PublishError(CountyflError):
    """A run folder cannot be published as it is."""


def sha256_of(path: Path) -> str:
    """The sha256 of a file, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_record(run_dir: Path) -> tuple[RunRecord, dict[str, Any]]:
    """run.json and its run config with every default filled in (PublishError if broken)."""
    try:
        run = RunRecord.read(run_dir)
        # Dumped back with every default filled in, so no key is ever missing.
        return run, run.run_config().model_dump(mode="json", by_alias=True)
    except RunFolderError as error:
        raise PublishError(str(error)) from None
    except CountyflError as error:
        raise PublishError(f"{run_dir / RUN_FILE}: {error}") from error


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz the ServerApp wrote; PublishError if the file is damaged."""
    try:
        with np.load(path) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise PublishError(f"{path} cannot be read as the run's model ({error})") from error


def final_state(run_dir: Path, secret_context_path: Path | None) -> dict[str, np.ndarray]:
    """The final global model of a run as a state dict of numpy arrays.

    Under CKKS the aggregate is decrypted with the secret context (which must be the key
    the run used: the fingerprint is checked); a plaintext run's model is read as it is.
    """
    _, config = _run_record(run_dir)
    aggregate = run_dir / FINAL_AGGREGATE_FILE
    if aggregate.is_file():
        if secret_context_path is None:
            raise PublishError(
                f"{aggregate} is encrypted: give the institutions' secret context "
                "(--secret-context, written by `countyfl keys init`) to publish it"
            )
        from flwr.app import Array, ArrayRecord

        from countyfl.privacy.he.codec import CodecError, decrypt_average
        from countyfl.privacy.he.keys import load_secret_context
        from countyfl.privacy.he.wire import arrays_to_update

        num_features = scenarios.get(config["scenario"]).num_features
        template = models.build(config["model"], num_features).state_dict()
        shapes = [tuple(t.shape) for t in template.values()]
        record = ArrayRecord({k: Array(v) for k, v in _load_arrays(aggregate).items()})
        try:
            arrays = decrypt_average(
                arrays_to_update(record), load_secret_context(secret_context_path), shapes
            )
        except CodecError as error:
            raise PublishError(f"cannot decrypt {aggregate}: {error}") from error
        return {
            name: np.asarray(a, dtype=np.float32).reshape(t.shape)
            for (name, t), a in zip(template.items(), arrays, strict=True)
        }
    plain = run_dir / FINAL_MODEL_FILE
    if not plain.is_file():
        raise PublishError(f"{run_dir} holds neither {FINAL_AGGREGATE_FILE} nor {FINAL_MODEL_FILE}")
    return _load_arrays(plain)


def _calibration(run_dir: Path) -> CalibrationRecord | None:
    try:
        return CalibrationRecord.read(run_dir)
    except RunFolderError as error:
        raise PublishError(str(error)) from None


def decrypted_calibration(
    run_dir: Path, record: CalibrationRecord, secret_context_path: Path | None, minimum: int
) -> CalibrationRecord:
    """Distributed noise: decrypt the county's summed calibration sums, compute the shift.

    Only the sum of at least ``minimum`` (the run's min-contributors) sites is ever
    decrypted (the ServerApp adds nothing below that), and it carries the whole noise
    (docs/privacy.md).
    """
    from countyfl.privacy.calibration import decrypt_sums, intercept_shift
    from countyfl.privacy.he.codec import CodecError
    from countyfl.privacy.he.keys import load_secret_context

    if secret_context_path is None:
        raise PublishError(
            f"{run_dir}'s calibration sums are encrypted: publishing needs the institutions' "
            "secret context (--secret-context)"
        )
    if record.contributors < minimum:
        raise PublishError(
            f"{run_dir}'s encrypted calibration sums hold {record.contributors} institution(s), "
            f"fewer than the task's min-contributors {minimum}: they are not decrypted"
        )
    path = run_dir / CALIBRATION_AGGREGATE_FILE
    try:
        sums = decrypt_sums(
            load_secret_context(secret_context_path), path.read_bytes(), rows=record.rows
        )
        shift = intercept_shift([sums], 1)
    except (OSError, CodecError, ValueError) as error:
        raise PublishError(
            f"{path}: the encrypted calibration sums cannot be used: {error}"
        ) from None
    return CalibrationRecord(
        **{**asdict(shift), "contributors": record.contributors}, encrypted=True
    )


def calibrated_state(state: dict[str, np.ndarray], shift: float) -> dict[str, np.ndarray]:
    """The state with ``shift`` added to the output's bias (the state's last entry).

    Every registered model ends in one logit, so its last entry is that logit's bias.
    """
    if not shift:
        return state
    name = list(state)[-1]
    bias = np.asarray(state[name])
    if bias.size != 1:
        raise PublishError(
            f"the run's calibration shifts the output's bias, but the model's last entry "
            f"{name!r} has shape {bias.shape}, not one value"
        )
    return {**state, name: (bias + np.float32(shift)).astype(bias.dtype)}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarise_history(history: FederationHistory) -> dict[str, Any]:
    """Institutions, per-institution epsilon/delta and metrics of the last round."""
    names = history.institution_names()
    rounds = sorted(history.rounds)
    trained: dict[int, dict[str, float]] = {}
    for server_round in rounds:  # the last value each institution reported wins
        trained.update(history.rounds[server_round].train)
    last_eval = history.rounds[rounds[-1]].evaluate if rounds else {}

    def name(partition: int) -> str:
        return names.get(partition, f"partition-{partition}")

    spent = {p: v[protocol.EPSILON] for p, v in trained.items() if protocol.EPSILON in v}
    # A calibrated run's last evaluation reports the spend after its calibration sums.
    spent |= {p: v[protocol.EPSILON] for p, v in last_eval.items() if protocol.EPSILON in v}
    privacy = {
        name(p): {
            "epsilon": _finite(float(spent[p])),
            "delta": _finite(float(trained.get(p, {}).get(protocol.DELTA, math.nan))),
        }
        for p in sorted(spent)
    }
    shown = {protocol.NUM_EXAMPLES, *protocol.EVALUATION_METRICS}
    per_institution = {
        name(p): {k: _finite(float(x)) for k, x in v.items() if k in shown}
        for p, v in sorted(last_eval.items())
    }
    federated: dict[str, float | None] = {}
    weights = {p: float(v.get(protocol.NUM_EXAMPLES, 0.0)) for p, v in last_eval.items()}
    total = sum(weights.values())
    for metric in FEDERATED_METRICS:
        values = [(weights[p], v[metric]) for p, v in last_eval.items() if metric in v]
        if values and total > 0:
            federated[metric] = _finite(sum(w * float(x) for w, x in values) / total)
    return {
        "institutions": [name(p) for p in sorted(set(trained) | set(last_eval))],
        "privacy": privacy,
        "metrics": {"federated": federated, "per_institution": per_institution},
    }


# -- input transform ---------------------------------------------------------------------

HEART_DISEASE_SCHEMA = "heart-disease"
FRAMINGHAM_SCHEMA = "framingham"


def input_transform(scenario: str) -> dict[str, Any]:
    """The ``features`` block of ``model.json`` for a model trained on ``scenario``.

    ``{"schema", "names", "mean", "scale"}``: a served record of ``schema`` is encoded into
    ``names`` and scaled as ``(raw - mean) / scale`` with the task's reference constants,
    the same transform every institution trained with.

    Raises
    ------
    PublishError
        If the scenario is unknown.
    """
    if scenario == "framingham-county":
        from countyfl.data import framingham

        return {
            "schema": FRAMINGHAM_SCHEMA,
            "names": list(framingham.FEATURE_NAMES),
            "mean": [framingham.REFERENCE_SCALE[f][0] for f in framingham.FEATURES],
            "scale": [framingham.REFERENCE_SCALE[f][1] for f in framingham.FEATURES],
        }
    if scenario == "fed-heart-disease":
        from countyfl.data import fed_heart_disease

        return {
            "schema": HEART_DISEASE_SCHEMA,
            "names": list(fed_heart_disease.FEATURE_NAMES),
            "mean": [
                fed_heart_disease.REFERENCE_SCALE[f][0] for f in fed_heart_disease.FEATURE_NAMES
            ],
            "scale": [
                fed_heart_disease.REFERENCE_SCALE[f][1] for f in fed_heart_disease.FEATURE_NAMES
            ],
        }
    try:
        known = scenarios.get(scenario)
    except CountyflError as error:  # an unknown name, or a task file that is gone or broken
        raise PublishError(
            f"no input transform is known for scenario {scenario!r}, so a model of it cannot "
            f"be published for serving: {error}"
        ) from None
    if known.task is not None:
        # A county's own task: the transform carries the task, whose features the API's
        # input schema is built from (units, ranges, categories).
        return {
            **known.input_transform(),
            "schema": "task",
            "task": known.task.model_dump(mode="json"),
        }
    # Any other registered scenario declares its transform itself (the county scenarios:
    # Framingham's schema and reference constants).
    return known.input_transform()


def publish(
    run_dir: Path,
    out_dir: Path | None = None,
    *,
    secret_context_path: Path | None = None,
    name: str | None = None,
    task_manifest_hash: str | None = None,
) -> dict[str, Any]:
    """Write ``model.npz`` and ``model.json`` for the finished run in ``run_dir``.

    Returns the metadata written. ``out_dir`` defaults to ``run_dir / PUBLISHED_DIR``;
    ``name`` to the scenario's registry name.
    """
    run, config = _run_record(run_dir)
    try:
        history = FederationHistory.read(run_dir / HISTORY_FILE)
    except RunFolderError as error:
        raise PublishError(str(error)) from None
    state = final_state(run_dir, secret_context_path)
    calibration = _calibration(run_dir)
    if calibration is not None and calibration.encrypted and not calibration.skipped:
        calibration = decrypted_calibration(
            run_dir, calibration, secret_context_path, int(config["min-contributors"])
        )
    if calibration is not None:
        state = calibrated_state(state, calibration.shift)
    out = out_dir or run_dir / PUBLISHED_DIR
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    arrays: dict[str, Any] = dict(state)
    np.savez(buffer, **arrays)
    (out / ARTIFACT_FILE).write_bytes(buffer.getvalue())
    encryption = None
    if config.get("encryption") == "ckks":
        from countyfl.privacy.he.keys import DEFAULT_PARAMETERS, fingerprint, load_secret_context

        assert secret_context_path is not None  # final_state refused otherwise
        encryption = {
            "scheme": "ckks",
            **asdict(DEFAULT_PARAMETERS),
            "key-fingerprint": fingerprint(load_secret_context(secret_context_path)),
        }
    metadata = {
        "name": name or scenarios.get(config["scenario"]).registry_name,
        "model": config["model"],
        "run_id": run.run_id or run_dir.name,
        "scenario": scenarios.get(config["scenario"]).name,
        "task_manifest_hash": task_manifest_hash or run.task_manifest_hash,
        "rounds": len(history.rounds),
        **summarise_history(history),
        "encryption": encryption,
        "artifact": {"path": ARTIFACT_FILE, "sha256": sha256_of(out / ARTIFACT_FILE)},
        "created_at": datetime.now(UTC).isoformat(),
        "features": input_transform(config["scenario"]),
        "calibration": calibration,
    }
    # One definition of model.json: the registry's reader checks what this writes.
    try:
        published = PublishedModel.model_validate(metadata)
    except ValidationError as error:
        problems = describe_validation_error(error, whole="model.json")
        raise PublishError(f"{run_dir} cannot be published as it is: {problems}") from None
    text = json.dumps(published.model_dump(mode="json"), indent=1)
    (out / METADATA_FILE).write_text(text, encoding="utf-8")
    return metadata
