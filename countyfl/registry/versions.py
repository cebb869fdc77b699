"""Model versions: registration with lineage, promotion gates, archival, thresholds, artifacts.

Rules
-----
- A version is registered as a ``candidate`` and numbered 1, 2, ... per model name, once its
  artifact was loaded and judged sound (:func:`countyfl.registry.artifacts.inspect_state`).
- ``candidate -> production`` needs a threshold for the model name (``registry_thresholds``),
  an input transform, every thresholded metric *measured by the registry* on the
  promoter's held-out data at or above its minimum (:mod:`countyfl.registry.evaluation`),
  and a second person: whoever registered the version may not promote it. The metrics the
  run reported are kept, and never decide. The previous production version of the name is
  archived in the same transaction; the database holds at most one production version per
  name.
- ``candidate -> archived`` and ``production -> archived``; an archived version stays archived.
- Every stage change is kept in ``registry_stage_transitions`` (who, when, from, to, why).
- To a caller who may read production versions only, any other version does not exist.

Every function checks that the principal is a live user allowed to act
(:func:`countyfl.registry.principals.authorize_live`) and audits what it does, in the order
described in :mod:`countyfl.registry.audit_sink`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine, Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from countyfl.registry.artifacts import (
    artifact_path,
    inspect_state,
    parse_state,
    read_checked,
)
from countyfl.registry.audit_sink import AuditSink, Change, Outcome, audited_transaction, record
from countyfl.registry.errors import (
    ArtifactIntegrityError,
    EvaluationDataError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    StageChangeRefusedError,
    UnsafeModelError,
)
from countyfl.registry.evaluation import GATED_METRICS, EvaluationData, measure
from countyfl.registry.permissions import Action, authorize, is_allowed
from countyfl.registry.principals import authorize_live, require_live
from countyfl.registry.roles import Principal
from countyfl.registry.schemas import (
    MAX_VERSION,
    TEXT_PATTERN,
    Encryption,
    EvaluationPublic,
    FeatureTransform,
    InstitutionPrivacy,
    MetricValue,
    ModelMetrics,
    ModelVersionCreate,
    ModelVersionPublic,
    ProductionPointer,
    Stage,
    StageTransitionPublic,
    ThresholdPublic,
    check_name,
)
from countyfl.registry.tables import (
    EvaluationRow,
    ModelVersionRow,
    StageTransitionRow,
    ThresholdRow,
    VersionInstitutionRow,
)
from countyfl.registry.timestamps import as_utc, utc_now
from countyfl.storage.database import fetch_row, session_factory

logger = logging.getLogger(__name__)

_REGISTER_ATTEMPTS = 5
MIN_THRESHOLD = 0.5
"""The least a threshold may ask for: accuracy and AUC of 0.5 are what chance achieves."""

if TYPE_CHECKING:
    import numpy.typing as npt


def version_target(name: str, version: int | None = None) -> str:
    """The audit target of a model (``model:NAME``) or of one version (``model:NAME:vN``)."""
    return f"model:{name}" if version is None else f"model:{name}:v{version}"


# -- artifacts ---------------------------------------------------------------------------


def read_artifact(version: ModelVersionPublic) -> bytes:
    """The bytes of ``version``'s artifact, after checking their sha256 against the registry.

    The check runs on every read, over the very bytes returned, so a file swapped after
    registration is never used; a symbolic link put in its place is not followed.

    Raises
    ------
    ArtifactIntegrityError
        If the file is missing, a link, unreadable, or its sha256 differs from the registered
        one.
    """
    return read_checked(version.artifact_uri, version.artifact_sha256, version.label)


def load_artifact(version: ModelVersionPublic) -> dict[str, npt.NDArray[Any]]:
    """The model's state dict (``name -> array``) from its checked ``.npz`` artifact.

    Raises
    ------
    ArtifactIntegrityError
        If the file is missing, its sha256 differs from the registered one, or it is not an
        ``.npz`` archive of plain arrays.
    """
    data = read_artifact(version)
    try:
        return parse_state(
            data, f"the artifact of {version.label} at {version.artifact_uri} (sha256 matches)"
        )
    except ArtifactIntegrityError as error:
        raise ArtifactIntegrityError(
            f"{error}; it was registered broken, archive this version"
        ) from None


# -- rows -> schemas -------------------------------------------------------------------


def _stored(value: Any, adapter: TypeAdapter[Any], fallback: Any, what: str) -> Any:
    """A stored JSON value checked against its schema; ``fallback`` if it does not fit.

    Rows are written through the bounded schemas; one written some other way (an older
    version, a hand edit) must not make every listing fail, so it is shown as missing.
    """
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except (ValidationError, RecursionError):
        logger.warning("%s does not fit its schema; shown as missing", what)
        return fallback


_ENCRYPTION: TypeAdapter[Any] = TypeAdapter(Encryption)
_METRICS: TypeAdapter[Any] = TypeAdapter(ModelMetrics)
_FEATURES: TypeAdapter[Any] = TypeAdapter(FeatureTransform)
_EVALUATION_METRICS: TypeAdapter[Any] = TypeAdapter(dict[str, MetricValue])


def _evaluation(row: ModelVersionRow) -> EvaluationPublic | None:
    if not row.evaluations:
        return None
    latest = row.evaluations[-1]
    return EvaluationPublic(
        data_sha256=latest.data_sha256,
        rows=latest.rows,
        positives=latest.positives,
        metrics=_stored(latest.metrics, _EVALUATION_METRICS, {}, "an evaluation's metrics"),
        evaluated_by=latest.evaluated_by,
        evaluated_at=as_utc(latest.evaluated_at),
    )


def _public(row: ModelVersionRow) -> ModelVersionPublic:
    label = f"{row.name} v{row.version}"
    metrics = _stored(
        {"federated": row.federated_metrics, "per_institution": row.institution_metrics},
        _METRICS,
        ModelMetrics(federated={}),
        f"the metrics of {label}",
    )
    return ModelVersionPublic(
        id=row.id,
        name=row.name,
        version=row.version,
        stage=Stage(row.stage),
        architecture=row.architecture,
        run_id=row.run_id,
        scenario=row.scenario,
        task_manifest_hash=row.task_manifest_hash,
        rounds=row.rounds,
        institutions=[
            InstitutionPrivacy(institution=item.institution, epsilon=item.epsilon, delta=item.delta)
            for item in row.institutions
        ],
        encryption=_stored(
            row.encryption, _ENCRYPTION, {"unreadable": True}, f"the encryption of {label}"
        ),
        metrics=metrics,
        artifact_sha256=row.artifact_sha256,
        artifact_uri=row.artifact_uri,
        registered_by=row.registered_by,
        created_at=as_utc(row.created_at),
        published_at=None if row.published_at is None else as_utc(row.published_at),
        history=[
            StageTransitionPublic(
                from_stage=None if item.from_stage is None else Stage(item.from_stage),
                to_stage=Stage(item.to_stage),
                changed_by=item.changed_by,
                changed_at=as_utc(item.changed_at),
                reason=item.reason,
            )
            for item in row.history
        ],
        features=_stored(row.features, _FEATURES, None, f"the input transform of {label}"),
        evaluation=_evaluation(row),
    )


def _threshold_public(row: ThresholdRow) -> ThresholdPublic:
    return ThresholdPublic(
        model_name=row.model_name,
        metric=row.metric,
        minimum=row.minimum,
        set_by=row.set_by,
        set_at=as_utc(row.set_at),
    )


def _versions() -> Select[ModelVersionRow]:
    return select(ModelVersionRow).options(
        selectinload(ModelVersionRow.institutions),
        selectinload(ModelVersionRow.history),
        selectinload(ModelVersionRow.evaluations),
    )


def _not_found(name: str, version: int) -> NotFoundError:
    return NotFoundError(
        f"no version {version} of model {name!r}; `countyfl registry list --name {name}` "
        "shows the versions you may read"
    )


def check_version_number(version: int) -> int:
    """``version`` if it is a possible version number (1 to 2**31 - 1).

    Raises
    ------
    InvalidInputError
        Otherwise (such a number could not even be looked up in the database).
    """
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise InvalidInputError(
            f"version {version!r} is not a version number; versions are 1 to {MAX_VERSION}"
        )
    return version


def _find(session: Session, name: str, version: int) -> ModelVersionRow:
    row = session.scalar(
        _versions().where(
            ModelVersionRow.name == name,
            ModelVersionRow.version == check_version_number(version),
        )
    )
    if row is None:
        raise _not_found(name, version)
    return row


# -- registration ------------------------------------------------------------------------


def register_version(
    engine: Engine, candidate: ModelVersionCreate, *, principal: Principal, audit: AuditSink
) -> ModelVersionPublic:
    """Register ``candidate`` as the next version of its model name, in stage ``candidate``.

    The artifact must be a local regular file (not a symbolic link) whose sha256 is
    ``candidate.artifact_sha256``; its real location is stored as an absolute path. The
    model is judged by what it is, not by its lineage: the artifact is loaded and refused if
    a weight is not finite or absurdly large, or (with an input transform) if the weights do
    not fit the architecture or answer a non-finite probability
    (:func:`countyfl.registry.artifacts.inspect_state`).

    Raises
    ------
    PermissionDeniedError
        If ``principal`` may not register models.
    InactivePrincipalError
        If ``principal`` is not an enabled, approved user with that role.
    InvalidInputError
        If the artifact location is not a local file.
    ArtifactIntegrityError
        If the artifact is missing, a link, not an ``.npz`` archive, or its sha256 differs
        (the refusal is audited).
    UnsafeModelError
        If the model fails the checks above (audited).
    """
    target = version_target(candidate.name)
    authorize_live(engine, principal, Action.MODEL_REGISTER, audit=audit, target=target)
    given = Path(os.path.abspath(artifact_path(candidate.artifact_uri).expanduser()))
    path = Path(os.path.realpath(given))
    label = f"the model to register ({candidate.name}, run {candidate.run_id})"
    refusal: dict[str, object] = {"run-id": candidate.run_id, "artifact": str(given)}
    try:
        data = read_checked(str(given), candidate.artifact_sha256, None)
        state = parse_state(data, f"the artifact to register at {given}")
    except ArtifactIntegrityError:
        record(
            audit,
            principal,
            Action.MODEL_REGISTER,
            target,
            Outcome.REFUSED,
            {"reason": "artifact-integrity", **refusal},
        )
        raise
    try:
        inspect_state(
            state,
            architecture=candidate.architecture,
            features=candidate.features,
            label=label,
        )
    except UnsafeModelError:
        record(
            audit,
            principal,
            Action.MODEL_REGISTER,
            target,
            Outcome.REFUSED,
            {"reason": "unsafe-model", **refusal},
        )
        raise

    details = {
        "run-id": candidate.run_id,
        "artifact-sha256": candidate.artifact_sha256,
        "institutions": list(candidate.institutions),
    }
    for attempt in range(1, _REGISTER_ATTEMPTS + 1):
        with session_factory(engine)() as session:
            number = _next_number(session, candidate.name)
        change = Change(Action.MODEL_REGISTER, version_target(candidate.name, number), details)
        try:
            with audited_transaction(engine, audit, principal, change) as session:
                if _next_number(session, candidate.name) != number:
                    raise _VersionNumberTakenError(
                        f"version {number} of {candidate.name!r} was registered by someone else "
                        "at the same moment; register again"
                    )
                return _insert_version(session, candidate, number, path, principal)
        except _VersionNumberTakenError:
            if attempt == _REGISTER_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _next_number(session: Session, name: str) -> int:
    latest = session.scalar(
        select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name)
    )
    return 1 + (latest or 0)


class _VersionNumberTakenError(RegistryError):
    """Another registration of the same name took the number first (count again)."""


def _insert_version(
    session: Session, candidate: ModelVersionCreate, number: int, path: Path, principal: Principal
) -> ModelVersionPublic:
    now = utc_now()
    row = ModelVersionRow(
        name=candidate.name,
        version=number,
        stage=Stage.CANDIDATE.value,
        architecture=candidate.architecture,
        run_id=candidate.run_id,
        scenario=candidate.scenario,
        task_manifest_hash=candidate.task_manifest_hash,
        rounds=candidate.rounds,
        encryption=candidate.encryption,
        federated_metrics=candidate.metrics.federated,
        institution_metrics=candidate.metrics.per_institution,
        artifact_sha256=candidate.artifact_sha256,
        artifact_uri=str(path),
        registered_by=principal.username,
        created_at=now,
        published_at=candidate.published_at,
        features=(
            None
            if candidate.features is None
            else candidate.features.model_dump(mode="json", by_alias=True)
        ),
    )
    for position, institution in enumerate(candidate.institutions):
        spent = candidate.privacy.get(institution)
        row.institutions.append(
            VersionInstitutionRow(
                position=position,
                institution=institution,
                epsilon=None if spent is None else spent.epsilon,
                delta=None if spent is None else spent.delta,
            )
        )
    row.history.append(
        StageTransitionRow(
            from_stage=None,
            to_stage=Stage.CANDIDATE.value,
            changed_by=principal.username,
            changed_at=now,
            reason=f"registered from run {candidate.run_id}",
        )
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise _VersionNumberTakenError(
            f"version {number} of {candidate.name!r} was registered by someone else at the "
            "same moment; register again"
        ) from None
    return _public(row)


def register_candidate(
    engine: Engine,
    *,
    name: str,
    architecture: str,
    run_id: str,
    scenario: str,
    rounds: int,
    institutions: Sequence[str],
    federated_metrics: Mapping[str, float | None],
    artifact_location: str | Path,
    artifact_sha256: str,
    institution_metrics: Mapping[str, Mapping[str, float | None]] | None = None,
    privacy: Mapping[str, Mapping[str, float | None]] | None = None,
    encryption: Mapping[str, Any] | None = None,
    task_manifest_hash: str | None = None,
    published_at: datetime | None = None,
    features: Mapping[str, Any] | None = None,
    principal: Principal,
    audit: AuditSink,
) -> ModelVersionPublic:
    """Register a candidate version from explicit lineage (for the federation runner).

    Parameters
    ----------
    engine : Engine
        The registry database (migrated with ``countyfl.storage.upgrade``).
    name : str
        Registry model name, e.g. ``heart-disease-diagnosis``.
    architecture : str
        Network architecture, a name of ``countyfl.models``, e.g. ``diagnosis-logreg``.
    run_id, scenario : str
        The run that trained the model and its scenario.
    rounds : int
        Federated rounds run.
    institutions : sequence of str
        Institutions that took part, in the order to show them.
    federated_metrics : mapping
        The federated evaluation, ``metric -> value`` (NaN or None: undefined).
    artifact_location : str or Path
        The model's ``.npz`` file (a local path or ``file://`` URI).
    artifact_sha256 : str
        Its sha256; registration is refused if the file does not match.
    institution_metrics : mapping, optional
        ``institution -> metric -> value``.
    privacy : mapping, optional
        ``institution -> {"epsilon": float | None, "delta": float | None}``; empty or ``None``
        when the run used no differential privacy.
    encryption : mapping, optional
        Homomorphic encryption parameters; ``None`` for plaintext aggregation.
    task_manifest_hash : str, optional
        Hash of the approved task manifest the run executed.
    published_at : datetime, optional
        When the model was published.
    features : mapping, optional
        The input transform (``{"schema", "names", "mean", "scale"}``, see
        :class:`~countyfl.registry.schemas.FeatureTransform`); without it the version cannot
        serve predictions.
    principal : Principal
        Who registers (needs ``model.register``); recorded as ``registered_by``.
    audit : AuditSink
        Records the registration.

    Raises
    ------
    InvalidInputError
        If a lineage field is invalid (the message names the field).
    ArtifactIntegrityError
        If the artifact is missing or does not match ``artifact_sha256``.
    PermissionDeniedError
        If ``principal`` may not register models.
    """
    fields = {
        "name": name,
        "architecture": architecture,
        "run_id": run_id,
        "scenario": scenario,
        "task_manifest_hash": task_manifest_hash,
        "rounds": rounds,
        "institutions": list(institutions),
        "privacy": dict(privacy or {}),
        "encryption": None if encryption is None else dict(encryption),
        "metrics": {
            "federated": dict(federated_metrics),
            "per_institution": {
                key: dict(value) for key, value in (institution_metrics or {}).items()
            },
        },
        "artifact_uri": str(artifact_location),
        "artifact_sha256": artifact_sha256,
        "published_at": published_at,
        "features": None if features is None else dict(features),
    }
    try:
        candidate = ModelVersionCreate.model_validate(fields)
    except ValidationError as error:
        raise InvalidInputError(
            f"cannot register a version of {name!r}: {describe_validation_error(error)}"
        ) from None
    return register_version(engine, candidate, principal=principal, audit=audit)


def describe_validation_error(error: ValidationError) -> str:
    """A pydantic error as ``field 'a.b': message; ...``, naming every bad field."""
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"field {location!r}: {message}" if location else message)
    return "; ".join(parts)


# -- reading -----------------------------------------------------------------------------


def list_versions(
    engine: Engine,
    *,
    name: str | None = None,
    stage: Stage | None = None,
    principal: Principal,
    audit: AuditSink,
) -> list[ModelVersionPublic]:
    """Versions by name and number, optionally of one name and one stage.

    A caller without ``model.read-any-stage`` (a clinician) sees production versions only;
    asking such a caller's listing for candidates or archived versions is refused.
    """
    if name is not None:
        check_model_name(name)
    target = version_target(name or "*")
    authorize_live(engine, principal, Action.MODEL_LIST, audit=audit, target=target)
    if stage is not None and stage is not Stage.PRODUCTION:
        authorize(principal, Action.MODEL_READ_ANY_STAGE, audit=audit, target=target)
    elif not is_allowed(principal.role, Action.MODEL_READ_ANY_STAGE):
        stage = Stage.PRODUCTION
    query = _versions().order_by(ModelVersionRow.name, ModelVersionRow.version)
    if name is not None:
        query = query.where(ModelVersionRow.name == name)
    if stage is not None:
        query = query.where(ModelVersionRow.stage == stage.value)
    with session_factory(engine)() as session:
        versions = [_public(row) for row in session.scalars(query)]
    record(
        audit,
        principal,
        Action.MODEL_LIST,
        target,
        Outcome.OK,
        {"stage": None if stage is None else stage.value, "count": len(versions)},
    )
    return versions


def get_version(
    engine: Engine,
    name: str,
    version: int | None = None,
    *,
    principal: Principal,
    audit: AuditSink,
) -> ModelVersionPublic:
    """One version with its lineage and history; the read is audited.

    With ``version=None``: the production version of ``name`` if there is one, otherwise
    (for callers who may read every stage) its newest version. For a caller who may read
    production versions only (a clinician), a version that is not in production does not
    exist: it is answered exactly as a missing one, so that unreleased names stay unknown.

    Raises
    ------
    NotFoundError
        If there is no such version the caller may read (a refused read is audited).
    InvalidInputError
        If ``name`` is not a model name or ``version`` not a version number.
    PermissionDeniedError
        If the caller may not read models.
    """
    check_model_name(name)
    if version is not None:
        check_version_number(version)
    requested = version_target(name, version)
    authorize_live(engine, principal, Action.MODEL_READ, audit=audit, target=requested)
    any_stage = is_allowed(principal.role, Action.MODEL_READ_ANY_STAGE)
    with session_factory(engine)() as session:
        row: ModelVersionRow | None
        if version is not None:
            row = session.scalar(
                _versions().where(ModelVersionRow.name == name, ModelVersionRow.version == version)
            )
        else:
            row = session.scalar(
                _versions().where(
                    ModelVersionRow.name == name, ModelVersionRow.stage == Stage.PRODUCTION.value
                )
            )
            if row is None and any_stage:
                row = session.scalar(
                    _versions()
                    .where(ModelVersionRow.name == name)
                    .order_by(ModelVersionRow.version.desc())
                    .limit(1)
                )
        hidden = row is not None and row.stage != Stage.PRODUCTION.value and not any_stage
        found = None if row is None or hidden else _public(row)
    if found is None:
        if hidden:
            record(
                audit,
                principal,
                Action.MODEL_READ,
                requested,
                Outcome.REFUSED,
                {"reason": "not-released"},
            )
        if version is not None:
            raise _not_found(name, version)
        raise NotFoundError(
            f"model {name!r} has no version you can read; `countyfl registry list` (or GET "
            "/v1/models) shows the models you may read"
        )
    target = version_target(found.name, found.version)
    record(audit, principal, Action.MODEL_READ, target, Outcome.OK, {"stage": found.stage.value})
    return found


def check_model_name(name: str) -> str:
    """``name`` if it is a model name (:data:`NAME_PATTERN`), else :class:`InvalidInputError`."""
    try:
        return check_name("model", name)
    except (ValueError, TypeError) as error:
        raise InvalidInputError(str(error)) from None


def get_production(
    engine: Engine, name: str, *, principal: Principal, audit: AuditSink
) -> ModelVersionPublic:
    """The production version of ``name`` (what predictions use); the read is audited.

    Raises
    ------
    NotFoundError
        If ``name`` has no production version.
    """
    check_model_name(name)
    authorize_live(engine, principal, Action.MODEL_READ, audit=audit, target=version_target(name))
    with session_factory(engine)() as session:
        row = session.scalar(
            _versions().where(
                ModelVersionRow.name == name, ModelVersionRow.stage == Stage.PRODUCTION.value
            )
        )
        if row is None:
            raise NotFoundError(
                f"model {name!r} has no production version; a regulator promotes one with "
                f"`countyfl registry promote {name} VERSION`"
            )
        found = _public(row)
    record(
        audit,
        principal,
        Action.MODEL_READ,
        version_target(found.name, found.version),
        Outcome.OK,
        {"stage": found.stage.value},
    )
    return found


_POINTER = (
    "SELECT (SELECT count(*) FROM users WHERE username = ? AND role = ? AND NOT disabled "
    "AND NOT pending_approval), "
    "(SELECT version FROM registry_model_versions WHERE name = ? AND stage = ?), "
    "(SELECT artifact_sha256 FROM registry_model_versions WHERE name = ? AND stage = ?)"
)


def production_pointer(
    engine: Engine, name: str, *, principal: Principal, audit: AuditSink
) -> ProductionPointer:
    """Which version of ``name`` is in production now, and its artifact's sha256.

    One statement reads two indexed columns of one row and checks that the principal is a
    live user: cheap enough for a service to call on every request and reload its cached
    model when the answer changes. The permission is checked (``model.read``; a refusal is
    audited) but an allowed lookup is not audited: the caller audits what it does with the
    version (e.g. the prediction), or reads it with :func:`get_version`.

    Raises
    ------
    PermissionDeniedError
        If the caller may not read models.
    InactivePrincipalError
        If the principal is not an enabled, approved user with that role (audited).
    """
    check_model_name(name)
    target = version_target(name)
    authorize(principal, Action.MODEL_READ, audit=audit, target=target)
    # One statement through the pool's raw connection: this runs on every request of the
    # API, and an ORM session (or even a Core connection) costs several times the query.
    found = fetch_row(
        engine,
        _POINTER,
        (principal.username, principal.role.value, name, "production", name, "production"),
    )
    assert found is not None  # a SELECT of scalar subqueries always returns one row
    if not found[0]:
        require_live(engine, principal, audit=audit, action=Action.MODEL_READ, target=target)
    return ProductionPointer(name=name, version=found[1], artifact_sha256=found[2])


# -- thresholds --------------------------------------------------------------------------


def set_threshold(
    engine: Engine,
    model_name: str,
    metric: str,
    minimum: float,
    *,
    principal: Principal,
    audit: AuditSink,
) -> ThresholdPublic:
    """Set (or replace) the minimum federated ``metric`` a version of ``model_name`` needs.

    A promotion is checked against every threshold of the model name: each metric must be
    present in the version's federated metrics and at least its minimum.

    Raises
    ------
    PermissionDeniedError
        If ``principal`` may not set thresholds.
    InvalidInputError
        If the model name is malformed, the metric is not one the registry measures
        (:data:`~countyfl.registry.evaluation.GATED_METRICS`), or ``minimum`` is not between
        :data:`MIN_THRESHOLD` (chance) and 1.
    """
    check_model_name(model_name)
    if metric not in GATED_METRICS:
        raise InvalidInputError(
            f"a promotion threshold names a metric the registry measures itself on held-out "
            f"data: {' or '.join(GATED_METRICS)}, not {metric!r}"
        )
    if not (isinstance(minimum, float | int) and math.isfinite(minimum)) or not (
        MIN_THRESHOLD <= minimum <= 1
    ):
        raise InvalidInputError(
            f"the minimum of {metric} must be a number from {MIN_THRESHOLD:g} (no better than "
            f"chance) to 1, not {minimum}: a lower threshold would gate nothing"
        )
    target = f"threshold:{model_name}:{metric}"
    authorize_live(engine, principal, Action.THRESHOLD_SET, audit=audit, target=target)
    query = select(ThresholdRow).where(
        ThresholdRow.model_name == model_name, ThresholdRow.metric == metric
    )
    with session_factory(engine)() as session:
        previous = session.scalar(query.with_only_columns(ThresholdRow.minimum))
    details = {"minimum": float(minimum), "previous": previous}
    change = Change(Action.THRESHOLD_SET, target, details)
    with audited_transaction(engine, audit, principal, change) as session:
        row = session.scalar(query)
        if row is None:
            row = ThresholdRow(model_name=model_name, metric=metric)
            session.add(row)
        row.minimum = float(minimum)
        row.set_by = principal.username
        row.set_at = utc_now()
        try:
            session.flush()
        except IntegrityError:
            raise RegistryError(
                f"the threshold {metric} of {model_name!r} was set by someone else at the same "
                "moment; check `countyfl registry thresholds` and set it again if needed"
            ) from None
        return _threshold_public(row)


def list_thresholds(
    engine: Engine, *, model_name: str | None = None, principal: Principal, audit: AuditSink
) -> list[ThresholdPublic]:
    """The promotion thresholds, of one model name or of all."""
    if model_name is not None:
        check_model_name(model_name)
    target = f"threshold:{model_name or '*'}"
    authorize_live(engine, principal, Action.MODEL_LIST, audit=audit, target=target)
    query = select(ThresholdRow).order_by(ThresholdRow.model_name, ThresholdRow.metric)
    if model_name is not None:
        query = query.where(ThresholdRow.model_name == model_name)
    with session_factory(engine)() as session:
        thresholds = [_threshold_public(row) for row in session.scalars(query)]
    record(audit, principal, Action.MODEL_LIST, target, Outcome.OK, {"count": len(thresholds)})
    return thresholds


def unmet_thresholds(
    metrics: Mapping[str, float | None], thresholds: Mapping[str, float]
) -> dict[str, str]:
    """``metric -> why`` for every threshold that ``metrics`` do not meet (empty: all met)."""
    unmet: dict[str, str] = {}
    for metric, minimum in sorted(thresholds.items()):
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            unmet[metric] = f"{metric} was not measured (minimum {minimum:g})"
        elif value < minimum:
            unmet[metric] = f"{metric} = {value:.4g} is below the minimum {minimum:g}"
    return unmet


# -- stage changes -----------------------------------------------------------------------


def _thresholds(session: Session, name: str) -> dict[str, float]:
    return {
        item.metric: item.minimum
        for item in session.scalars(select(ThresholdRow).where(ThresholdRow.model_name == name))
    }


def _promotion_refusal(
    session: Session, row: ModelVersionRow, principal: Principal
) -> tuple[str, str, dict[str, object]] | None:
    """(reason, message, details) if ``principal`` may not promote ``row`` now.

    The thresholds themselves are checked later, against the metrics the registry measures.
    """
    label = f"{row.name} v{row.version}"
    if row.stage != Stage.CANDIDATE.value:
        return (
            "stage",
            f"{label} is {row.stage}; only a candidate can be promoted",
            {"stage": row.stage},
        )
    if row.registered_by == principal.username:
        return (
            "second-person",
            f"{label} was registered by {principal.username!r}, who therefore may not promote "
            "it: promotion needs a second person. Ask another regulator to review and promote it",
            {},
        )
    if not _thresholds(session, row.name):
        return (
            "no-thresholds",
            f"no promotion thresholds are set for {row.name!r}, so {label} cannot be checked; "
            f"an admin sets them with `countyfl registry threshold {row.name} METRIC MINIMUM` "
            "(e.g. auc 0.75)",
            {},
        )
    if row.features is None:
        return (
            "no-transform",
            f"{label} has no input transform, so the registry cannot evaluate it (nor could it "
            "serve); publish and register the model again",
            {},
        )
    return None


def check_reason(reason: str) -> str:
    """``reason`` (for the stage history) if it is at most 500 printable characters."""
    if not isinstance(reason, str) or len(reason) > 500 or not re.fullmatch(TEXT_PATTERN, reason):
        raise InvalidInputError(
            "a reason is at most 500 characters of text without control characters"
        )
    return reason


def promote(
    engine: Engine,
    name: str,
    version: int,
    *,
    evaluation: EvaluationData,
    principal: Principal,
    audit: AuditSink,
    reason: str = "",
) -> ModelVersionPublic:
    """Move a candidate to production, archiving the name's previous production version.

    The version is judged by what it does, not by the metrics its run reported: the registry
    runs its checked artifact on the held-out ``evaluation`` data the promoter supplies
    (:mod:`countyfl.registry.evaluation`) and every threshold of the name must be met by the
    metrics measured there. The measurement is stored with the version and audited (with the
    data's sha256), whether the promotion goes ahead or not.

    Raises
    ------
    PermissionDeniedError
        If ``principal`` may not promote.
    InactivePrincipalError
        If ``principal`` is not an enabled, approved user with that role.
    NotFoundError
        If there is no such version.
    StageChangeRefusedError
        If the version is not a candidate, ``principal`` registered it, no thresholds are set
        for the name, it has no input transform, or a measured metric falls short of its
        threshold (every refusal is audited).
    EvaluationDataError
        If the data's columns are not the model's features (audited).
    ArtifactIntegrityError, UnsafeModelError
        If the artifact fails its checks or answers non-finite probabilities (audited).
    """
    check_model_name(name)
    check_version_number(version)
    check_reason(reason)
    target = version_target(name, version)
    authorize_live(engine, principal, Action.MODEL_PROMOTE, audit=audit, target=target)
    with session_factory(engine)() as session:
        row = _find(session, name, version)
        refusal = _promotion_refusal(session, row, principal)
        replaced = _production_number(session, name)
        thresholds = _thresholds(session, name)
        found = _public(row)
        reported = dict(row.federated_metrics)

    def refuse(why: str, details: Mapping[str, object]) -> None:
        record(
            audit,
            principal,
            Action.MODEL_PROMOTE,
            target,
            Outcome.REFUSED,
            {"reason": why, **details},
        )

    if refusal is not None:
        why, message, details = refusal
        refuse(why, details)
        raise StageChangeRefusedError(message)
    assert found.features is not None  # _promotion_refusal refused it otherwise
    try:
        measured = measure(
            load_artifact(found),
            architecture=found.architecture,
            transform=found.features,
            data=evaluation,
            label=found.label,
        )
    except ArtifactIntegrityError:
        refuse("artifact-integrity", {})
        raise
    except UnsafeModelError:
        refuse("unsafe-model", {"data-sha256": evaluation.sha256})
        raise
    except EvaluationDataError:
        refuse("evaluation-data", {"data-sha256": evaluation.sha256})
        raise
    facts: dict[str, object] = {
        "data-sha256": evaluation.sha256,
        "rows": evaluation.rows,
        "positives": evaluation.positives,
        "measured": {key: _json_number(value) for key, value in measured.items()},
    }
    unmet = unmet_thresholds(measured, thresholds)
    if unmet:
        refuse("thresholds", {**facts, "unmet": sorted(unmet), "thresholds": thresholds})
        raise StageChangeRefusedError(
            f"{found.label} does not meet the thresholds of {name!r} on the held-out data "
            f"({evaluation.rows} rows): {'; '.join(unmet.values())}"
        )
    changes = [
        Change(
            Action.MODEL_PROMOTE,
            target,
            {"reason": reason, "replaces": replaced, "reported": reported, **facts},
        )
    ]
    if replaced is not None:
        changes.append(
            Change(
                Action.MODEL_ARCHIVE,
                version_target(name, replaced),
                {"from": Stage.PRODUCTION.value, "reason": f"replaced by v{version}"},
            )
        )
    with audited_transaction(engine, audit, principal, *changes) as session:
        return _apply_promotion(
            session, name, version, replaced, principal, reason, evaluation, measured
        )


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _production_number(session: Session, name: str) -> int | None:
    return session.scalar(
        select(ModelVersionRow.version).where(
            ModelVersionRow.name == name, ModelVersionRow.stage == Stage.PRODUCTION.value
        )
    )


def _apply_promotion(
    session: Session,
    name: str,
    version: int,
    replaced: int | None,
    principal: Principal,
    reason: str,
    evaluation: EvaluationData,
    measured: Mapping[str, float],
) -> ModelVersionPublic:
    changed = StageChangeRefusedError(
        f"{name!r} changed while v{version} was being promoted (another promotion or "
        f"archival); check `countyfl registry list --name {name}` and try again"
    )
    now = utc_now()
    row = _find(session, name, version)
    refusal = _promotion_refusal(session, row, principal)
    if refusal is not None:
        raise StageChangeRefusedError(refusal[1])
    unmet = unmet_thresholds(measured, _thresholds(session, name))
    if unmet:  # a threshold was raised meanwhile
        raise StageChangeRefusedError(
            f"{name} v{version} no longer meets the thresholds of {name!r}: "
            f"{'; '.join(unmet.values())}"
        )
    if _production_number(session, name) != replaced:
        raise changed
    row.evaluations.append(
        EvaluationRow(
            data_sha256=evaluation.sha256,
            rows=evaluation.rows,
            positives=evaluation.positives,
            metrics={key: _json_number(value) for key, value in measured.items()},
            evaluated_by=principal.username,
            evaluated_at=now,
        )
    )
    if replaced is not None:
        _move(
            _find(session, name, replaced),
            Stage.ARCHIVED,
            principal,
            now,
            f"replaced by v{version}",
        )
        # Flush the archival first: the one-production-per-name index is checked row by
        # row, and the unit of work might otherwise write the new production row first.
        session.flush()
    _move(row, Stage.PRODUCTION, principal, now, reason)
    try:
        session.flush()
    except IntegrityError:
        raise changed from None
    return _public(row)


def archive(
    engine: Engine,
    name: str,
    version: int,
    *,
    principal: Principal,
    audit: AuditSink,
    reason: str = "",
) -> ModelVersionPublic:
    """Archive a candidate or production version (archiving production leaves none serving).

    Raises
    ------
    PermissionDeniedError
        If ``principal`` may not archive.
    NotFoundError
        If there is no such version.
    StageChangeRefusedError
        If the version is archived already (audited).
    """
    check_model_name(name)
    check_version_number(version)
    check_reason(reason)
    target = version_target(name, version)
    authorize_live(engine, principal, Action.MODEL_ARCHIVE, audit=audit, target=target)
    with session_factory(engine)() as session:
        previous = _find(session, name, version).stage
    if previous == Stage.ARCHIVED.value:
        record(audit, principal, Action.MODEL_ARCHIVE, target, Outcome.REFUSED, {"reason": "stage"})
        raise StageChangeRefusedError(f"{name} v{version} is archived already")
    change = Change(Action.MODEL_ARCHIVE, target, {"from": previous, "reason": reason})
    with audited_transaction(engine, audit, principal, change) as session:
        row = _find(session, name, version)
        if row.stage != previous:
            raise StageChangeRefusedError(
                f"{name} v{version} changed from {previous} to {row.stage} while it was being "
                "archived; check it and try again"
            )
        _move(row, Stage.ARCHIVED, principal, utc_now(), reason)
        session.flush()
        return _public(row)


def _move(
    row: ModelVersionRow, stage: Stage, principal: Principal, when: datetime, reason: str
) -> None:
    row.history.append(
        StageTransitionRow(
            from_stage=row.stage,
            to_stage=stage.value,
            changed_by=principal.username,
            changed_at=when,
            reason=reason,
        )
    )
    row.stage = stage.value
