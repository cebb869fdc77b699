"""What the registry hands out: frozen pydantic schemas, separate from the ORM tables.

Every field that can reach the registry is bounded: names follow :data:`NAME_PATTERN`,
free text has no control characters and a length limit, numbers have ranges, collections
have a most number of items, and the lineage's free-form parts (encryption parameters)
are at most two levels deep. A database that holds something else was not written through
these schemas; reading it never fails because of it (``countyfl.registry.versions``).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    model_serializer,
    model_validator,
)

from countyfl.clinical.task import TaskDefinition
from countyfl.registry.roles import Role

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
"""Model, metric and institution names: lowercase kebab-case (dots and underscores allowed)."""
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
"""Free text (run ids, reasons): anything printable, no control characters."""
MAX_VERSION = 2**31 - 1
"""The largest version number (a 32-bit integer in every supported database)."""
MAX_ROUNDS = 100_000
MAX_INSTITUTIONS = 4_096
"""The most institutions one model version may name: a county of 1 + 31 + 992 (county-1024)
fits four times over."""
MAX_METRICS = 32
MAX_FEATURES = 1_024
MAX_ENCRYPTION_ENTRIES = 32
MAX_TRANSFORM_MAGNITUDE = 1e6
MIN_TRANSFORM_SCALE = 1e-6
"""A feature scale below this turns ordinary inputs into astronomically large ones."""


class Stage(StrEnum):
    """Where a model version is in its life: only production versions serve clinicians."""

    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"


def _finite_or_none(value: Any) -> Any:
    # A metric can be undefined (an AUC on a site with one class): the trainer writes NaN,
    # which PostgreSQL's JSON cannot hold, so it is stored as null ("not measured").
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _lowercase_hex(value: str) -> str:
    return value.lower()


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
MetricValue = Annotated[float | None, BeforeValidator(_finite_or_none)]
Sha256 = Annotated[str, AfterValidator(_lowercase_hex), Field(pattern=r"(?i)^[0-9a-f]{64}$")]
Text128 = Annotated[str, Field(min_length=1, max_length=128, pattern=TEXT_PATTERN)]
Reason = Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)]
VersionNumber = Annotated[int, Field(ge=1, le=MAX_VERSION)]

_EncryptionNumber = (
    Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
    | Annotated[float, Field(allow_inf_nan=False)]
)
EncryptionValue = (
    StrictBool
    | _EncryptionNumber
    | Annotated[str, Field(max_length=256, pattern=TEXT_PATTERN)]
    | Annotated[list[_EncryptionNumber], Field(max_length=64)]
    | None
)
Encryption = Annotated[
    dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")], EncryptionValue],
    Field(max_length=MAX_ENCRYPTION_ENTRIES),
]
"""Homomorphic encryption parameters: named numbers, short texts or short lists of numbers."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PrivacySpent(_Frozen):
    """Record-level DP spent by one institution on a version; both null when DP was off."""

    epsilon: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    delta: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | None = None


class InstitutionPrivacy(PrivacySpent):
    """An institution that trained a version, with the privacy it spent."""

    institution: Name


class ModelMetrics(_Frozen):
    """Evaluation metrics: the federated aggregate and each institution's own (null: undefined)."""

    federated: Annotated[dict[Name, MetricValue], Field(max_length=MAX_METRICS)]
    per_institution: Annotated[
        dict[Name, Annotated[dict[Name, MetricValue], Field(max_length=MAX_METRICS)]],
        Field(max_length=MAX_INSTITUTIONS),
    ] = Field(default_factory=dict)


InputSchema = Literal["heart-disease", "framingham", "task"]
"""The clinical record a model reads (``countyfl.data.schema``): ``HeartDiseaseRecord`` or
``FraminghamRecord``, or ``task``: the features of the county's task file stored with the
transform (``FeatureTransform.task``)."""

TransformMean = Annotated[
    float,
    Field(ge=-MAX_TRANSFORM_MAGNITUDE, le=MAX_TRANSFORM_MAGNITUDE, allow_inf_nan=False),
]
TransformScale = Annotated[
    float, Field(ge=MIN_TRANSFORM_SCALE, le=MAX_TRANSFORM_MAGNITUDE, allow_inf_nan=False)
]


class FeatureTransform(_Frozen):
    """How a patient record becomes a model's input, stored with the model (``features``).

    A record of ``schema`` is encoded into the raw feature vector named by ``names`` (in that
    order) and standardised feature by feature as ``(raw - mean) / scale``. A model can only
    serve with the transform it was trained with; versions registered before transforms
    were recorded have none and cannot serve.

    In JSON (``model.json``, the registry's column, the API) the schema's key is ``schema``.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    input_schema: InputSchema = Field(alias="schema")
    names: Annotated[list[Name], Field(min_length=1, max_length=MAX_FEATURES)]
    mean: Annotated[list[TransformMean], Field(max_length=MAX_FEATURES)]
    scale: Annotated[list[TransformScale], Field(max_length=MAX_FEATURES)]
    task: TaskDefinition | None = None
    """With schema ``task``: the task file's definition the model was trained on."""

    @model_serializer(mode="wrap")
    def _without_empty_task(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A built-in schema's transform keeps the shape it had before tasks existed.
        data: dict[str, Any] = handler(self)
        if data.get("task", 0) is None:
            del data["task"]
        return data

    @model_validator(mode="after")
    def _lengths_agree(self) -> FeatureTransform:
        if (self.input_schema == "task") != (self.task is not None):
            raise ValueError('schema "task" and a task definition go together')
        if self.task is not None and tuple(self.names) != self.task.feature_names:
            raise ValueError("names must be the task's model inputs, in order")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"feature names {self.names} name a feature twice")
        if not len(self.names) == len(self.mean) == len(self.scale):
            raise ValueError(
                f"{len(self.names)} feature names but {len(self.mean)} means and "
                f"{len(self.scale)} scales; give one mean and one scale per feature"
            )
        return self


class ModelVersionCreate(_Frozen):
    """The lineage of a new candidate version, as the federation runner or publisher gives it.

    ``privacy`` maps an institution to its (epsilon, delta); it is empty when DP was off.
    Every institution named in ``privacy`` or in the per-institution metrics must be one of
    ``institutions``.
    """

    name: Name
    architecture: Name
    run_id: Text128
    scenario: Text128
    task_manifest_hash: Text128 | None = None
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)]
    institutions: Annotated[list[Name], Field(min_length=1, max_length=MAX_INSTITUTIONS)]
    privacy: Annotated[dict[Name, PrivacySpent], Field(max_length=MAX_INSTITUTIONS)] = Field(
        default_factory=dict
    )
    encryption: Encryption | None = None
    metrics: ModelMetrics
    artifact_uri: Annotated[str, Field(min_length=1, max_length=1024, pattern=TEXT_PATTERN)]
    artifact_sha256: Sha256
    published_at: datetime | None = None
    features: FeatureTransform | None = None

    @model_validator(mode="after")
    def _institutions_agree(self) -> ModelVersionCreate:
        known = set(self.institutions)
        if len(known) != len(self.institutions):
            raise ValueError(f"institutions {self.institutions} name an institution twice")
        for where, names in (
            ("privacy", self.privacy),
            ("metrics.per_institution", self.metrics.per_institution),
        ):
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(
                    f"{where} names {unknown}, which are not in institutions {self.institutions}"
                )
        return self


class StageTransitionPublic(_Frozen):
    """One entry of a version's stage history (``from_stage`` is null at registration)."""

    from_stage: Stage | None
    to_stage: Stage
    changed_by: str
    changed_at: datetime
    reason: str


class EvaluationPublic(_Frozen):
    """Metrics the registry measured itself on held-out data (what promotion is judged by)."""

    data_sha256: str
    """sha256 of the held-out data (of the CSV file's bytes)."""
    rows: int
    positives: int
    metrics: dict[str, MetricValue]
    evaluated_by: str
    evaluated_at: datetime


class ModelVersionPublic(_Frozen):
    """A registered model version with its full lineage and stage history.

    ``metrics`` are what the run reported about itself; ``evaluation`` is what the registry
    measured when the version was promoted (None for versions never promoted).
    """

    id: int
    name: str
    version: int
    stage: Stage
    architecture: str
    run_id: str
    scenario: str
    task_manifest_hash: str | None
    rounds: int
    institutions: list[InstitutionPrivacy]
    encryption: Encryption | None
    metrics: ModelMetrics
    artifact_sha256: str
    artifact_uri: str
    registered_by: str
    created_at: datetime
    published_at: datetime | None
    history: list[StageTransitionPublic]
    features: FeatureTransform | None = None
    """The input transform the model was trained with (None: not recorded, cannot serve)."""
    evaluation: EvaluationPublic | None = None

    @property
    def label(self) -> str:
        """``NAME v VERSION``, e.g. ``heart-disease-diagnosis v3``."""
        return f"{self.name} v{self.version}"


class ProductionPointer(_Frozen):
    """Which version of a model name serves now: cheap enough to look up on every request.

    ``version`` and ``artifact_sha256`` are None when the name has no production version
    (whether or not it has other versions: to a service, an unreleased model does not exist).
    """

    name: str
    version: int | None
    artifact_sha256: str | None


class ThresholdPublic(_Frozen):
    """The minimum a federated metric must reach before a version of ``model_name`` goes live."""

    model_name: str
    metric: str
    minimum: float
    set_by: str
    set_at: datetime


class UserPublic(_Frozen):
    """A user as listed to admins: never the password hash."""

    id: int
    username: str
    role: Role
    disabled: bool
    has_password: bool
    created_at: datetime
    pending_approval: bool = False
    """A privileged role or password one admin gave, waiting for a second admin's approval."""
    changed_by: str | None = None
    """The admin whose change waits for approval (a second admin must approve it)."""


class ApiTokenPublic(_Frozen):
    """An API token's metadata: never the secret nor its hash."""

    id: int
    name: str
    owner: str
    fingerprint: str
    """The first 12 hex digits of the token's sha256, as written in the audit log."""
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    pending_approval: bool = False
    """Issued by an admin to act as another privileged user: waits for a second admin."""
    issued_by: str | None = None


class IssuedToken(_Frozen):
    """A freshly created API token: ``secret`` is shown once and never stored."""

    secret: SecretStr
    token: ApiTokenPublic


def check_username(username: str) -> str:
    """``username`` if it matches :data:`USERNAME_PATTERN`, else a ``ValueError`` saying so."""
    if not re.fullmatch(USERNAME_PATTERN, username):
        raise ValueError(
            f"user name {username!r} is not allowed; use 1-64 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return username


def check_name(kind: str, name: str) -> str:
    """``name`` if it matches :data:`NAME_PATTERN`, else a ``ValueError`` naming the ``kind``."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(
            f"{kind} name {name!r} is not allowed; use 1-128 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (e.g. heart-disease-diagnosis)"
        )
    return name
