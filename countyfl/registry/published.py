"""Registering the folder that ``countyfl model publish`` writes (model.json + model.npz).

The folder holds ``model.npz`` (the model's state dict as numpy arrays) and ``model.json``::

    {
      "name": "heart-disease-diagnosis",          registry model name
      "model": "diagnosis-logreg",                architecture
      "run_id": "...", "scenario": "...",
      "task_manifest_hash": "..." | null,
      "rounds": 15,
      "institutions": ["cleveland", ...],
      "privacy": {"cleveland": {"epsilon": 0.9, "delta": 0.001}, ...}  ({} without DP),
      "encryption": {...} | null,
      "metrics": {"federated": {"auc": 0.8}, "per_institution": {"cleveland": {...}}},
      "artifact": {"path": "model.npz", "sha256": "<hex>"},
      "created_at": "2026-11-28T10:00:00+00:00",
      "features": {"schema": "heart-disease", "names": [...], "mean": [...], "scale": [...]}
    }

``features`` is the input transform the model was trained with (see
``countyfl.registry.schemas.FeatureTransform``); folders published before it existed lack the
key, register without one, and cannot serve predictions.

Unknown keys are refused rather than ignored, so that lineage the publisher adds is never
silently dropped: a new key needs a field here first.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine

from countyfl.registry.audit_sink import AuditSink
from countyfl.registry.errors import PublishedModelError
from countyfl.registry.roles import Principal
from countyfl.registry.schemas import (
    MAX_INSTITUTIONS,
    MAX_ROUNDS,
    Encryption,
    FeatureTransform,
    ModelMetrics,
    ModelVersionCreate,
    ModelVersionPublic,
    Name,
    PrivacySpent,
    Sha256,
    Text128,
)
from countyfl.registry.versions import describe_validation_error, register_version
from countyfl.runs import CalibrationRecord

METADATA_FILE = "model.json"
ARTIFACT_FILE = "model.npz"
MAX_METADATA_BYTES = 1024 * 1024
"""A model.json is a few kilobytes; anything near this is not one."""


class PublishedArtifact(BaseModel):
    """Where the artifact lies inside the folder, and its sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._/-]+$")]
    sha256: Sha256


class PublishedModel(BaseModel):
    """The contents of ``model.json`` in a published model folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    model: Name
    run_id: Text128
    scenario: Text128
    task_manifest_hash: Text128 | None
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)]
    institutions: Annotated[list[Name], Field(min_length=1, max_length=MAX_INSTITUTIONS)]
    privacy: Annotated[dict[Name, PrivacySpent], Field(max_length=MAX_INSTITUTIONS)]
    encryption: Encryption | None
    metrics: ModelMetrics
    artifact: PublishedArtifact
    created_at: datetime
    features: FeatureTransform | None = None
    # The intercept shift applied to the artifact's output bias (countyfl.privacy.calibration)
    calibration: CalibrationRecord | None = None


def read_published(folder: Path) -> tuple[PublishedModel, Path]:
    """Parse and check a published folder: its ``model.json`` and the artifact's location.

    Returns
    -------
    tuple
        The validated metadata and the absolute path of the artifact inside ``folder``.

    Raises
    ------
    PublishedModelError
        If the folder or a file is missing, the JSON is malformed or too large, a field is
        invalid (the message names the field and the file), or the artifact is not a file
        inside the folder (a path that leaves it, or a symbolic link anywhere on the way).
    """
    folder = Path(folder).expanduser().resolve()
    metadata_path = folder / METADATA_FILE
    if not folder.is_dir():
        raise PublishedModelError(
            f"{folder} is not a folder; give the folder written by `countyfl model publish`"
        )
    try:
        if metadata_path.is_symlink():
            raise PublishedModelError(
                f"{metadata_path} is a symbolic link; a published folder holds its own model.json"
            )
        with metadata_path.open("rb") as handle:
            data = handle.read(MAX_METADATA_BYTES + 1)
        if len(data) > MAX_METADATA_BYTES:
            raise PublishedModelError(
                f"{metadata_path} is larger than {MAX_METADATA_BYTES} bytes; it is not a "
                "model.json written by `countyfl model publish`"
            )
        raw = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise PublishedModelError(
            f"{metadata_path} does not exist; {folder} is not a published model folder "
            "(run `countyfl model publish` to write one)"
        ) from None
    except OSError as error:
        raise PublishedModelError(f"{metadata_path} cannot be read ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PublishedModelError(f"{metadata_path} is not valid JSON: {error}") from None
    except RecursionError:
        raise PublishedModelError(
            f"{metadata_path} nests its JSON too deeply; it is not a model.json written by "
            "`countyfl model publish`"
        ) from None
    try:
        published = PublishedModel.model_validate(raw)
    except ValidationError as error:
        raise PublishedModelError(
            f"{metadata_path}: {describe_validation_error(error)}; fix the file or publish the "
            "model again"
        ) from None
    relative = PurePosixPath(published.artifact.path)
    if relative.is_absolute() or ".." in relative.parts:
        raise PublishedModelError(
            f"{metadata_path}: field 'artifact.path' is {published.artifact.path!r}; it must be a "
            f"path inside the folder, e.g. {ARTIFACT_FILE!r}"
        )
    artifact = folder.joinpath(*relative.parts)
    # Every step from the folder to the file must be a real folder or file, not a link:
    # a link would let the registry read (and serve) a file outside the published folder.
    step = folder
    for part in relative.parts:
        step = step / part
        if step.is_symlink():
            raise PublishedModelError(
                f"{metadata_path}: the artifact path {published.artifact.path!r} goes through the "
                f"symbolic link {step}; the artifact must be a file inside {folder}, not a link"
            )
    if artifact.resolve().parent != folder and folder not in artifact.resolve().parents:
        raise PublishedModelError(
            f"{metadata_path}: the artifact {artifact} is not inside {folder}"
        )
    return published, artifact


def register_published(
    engine: Engine, folder: Path, *, principal: Principal, audit: AuditSink
) -> ModelVersionPublic:
    """Register the model in a published folder as a new candidate version.

    The artifact's sha256 is checked against ``model.json`` before anything is written, and
    its absolute path in ``folder`` becomes the version's artifact location (keep the folder).

    Parameters
    ----------
    engine : Engine
        The registry database.
    folder : Path
        Folder written by ``countyfl model publish``.
    principal : Principal
        Who registers (needs ``model.register``).
    audit : AuditSink
        Records the registration or its refusal.

    Raises
    ------
    PublishedModelError
        If the folder or its ``model.json`` is not valid (the message names file and field).
    ArtifactIntegrityError
        If the artifact is missing or its sha256 differs from ``model.json``.
    PermissionDeniedError
        If ``principal`` may not register models.
    """
    published, artifact = read_published(folder)
    try:
        candidate = ModelVersionCreate(
            name=published.name,
            architecture=published.model,
            run_id=published.run_id,
            scenario=published.scenario,
            task_manifest_hash=published.task_manifest_hash,
            rounds=published.rounds,
            institutions=published.institutions,
            privacy=published.privacy,
            encryption=published.encryption,
            metrics=published.metrics,
            artifact_uri=str(artifact),
            artifact_sha256=published.artifact.sha256,
            published_at=published.created_at,
            features=published.features,
        )
    except ValidationError as error:
        raise PublishedModelError(
            f"{Path(folder) / METADATA_FILE}: {describe_validation_error(error)}; fix the file "
            "or publish the model again"
        ) from None
    return register_version(engine, candidate, principal=principal, audit=audit)
