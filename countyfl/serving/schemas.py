"""What the API reads and answers: request (``XCreate``) and response (``XPublic``) schemas.

Patient records follow the common clinical schema of ``countyfl.data.schema`` with its
ranges; each field also names its unit (``unit`` in the OpenAPI schema), which a 422 body
repeats. These classes are the API's contract only: the registry's tables and schemas stay
in ``countyfl.registry``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache
from types import MappingProxyType
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    create_model,
    model_validator,
)

from countyfl.clinical.task import FeatureType, MissingRule, TaskDefinition
from countyfl.data.federated import CareLevel
from countyfl.data.schema import ChestPain, FraminghamRecord, HeartDiseaseRecord, RestingEcg
from countyfl.registry.schemas import (
    NAME_PATTERN,
    Encryption,
    EvaluationPublic,
    FeatureTransform,
    InputSchema,
    InstitutionPrivacy,
    ModelMetrics,
    ModelVersionPublic,
    Stage,
    StageTransitionPublic,
)
from countyfl.serving.errors import ReferralConfigError
from countyfl.serving.referral.config import (
    CODE_PATTERN,
    SEVERITY_RANK,
    RiskBand,
    Severity,
    Urgency,
)


class Purpose(StrEnum):
    """Why the caller reads a model or asks for advice; recorded in the audit log.

    A closed list on purpose: free text could carry patient details into the log.
    """

    TREATMENT = "treatment"
    TRIAGE = "triage"
    REFERRAL = "referral"
    FOLLOW_UP = "follow-up"
    MODEL_REVIEW = "model-review"
    AUDIT = "audit"
    QUALITY_IMPROVEMENT = "quality-improvement"


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- errors ------------------------------------------------------------------------------


class FieldProblemPublic(_Schema):
    """One input field that was refused, what was expected and in which unit."""

    field: str
    problem: str
    expected: str | None = None
    unit: str | None = None


class ErrorPublic(_Schema):
    """Every error body: a stable code, a readable message, and the fields at fault (422)."""

    error: str
    message: str
    fields: list[FieldProblemPublic] = Field(default_factory=list)


# -- tokens ------------------------------------------------------------------------------


class TokenPublic(_Schema):
    """An OAuth2 access token (a short-lived HS256 JWT)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    """Seconds until the token expires."""
    expires_at: datetime


# -- model cards -------------------------------------------------------------------------


class ModelCardPublic(_Schema):
    """A model version's card: lineage, privacy spent per institution, metrics, stage.

    The artifact's location on the server is left out; its sha256 is what identifies it.
    """

    name: str
    version: int
    stage: Stage
    architecture: str
    run_id: str
    scenario: str
    rounds: int
    institutions: list[InstitutionPrivacy]
    encryption: Encryption | None
    metrics: ModelMetrics
    """What the run reported about itself (its federated evaluation)."""
    evaluation: EvaluationPublic | None
    """What the registry measured on held-out data when the version was promoted."""
    artifact_sha256: str
    registered_by: str
    created_at: datetime
    published_at: datetime | None
    history: list[StageTransitionPublic]
    features: FeatureTransform | None
    serves_predictions: bool
    """Whether this version can serve now: in production and with an input transform."""

    @classmethod
    def of(cls, version: ModelVersionPublic) -> ModelCardPublic:
        """The card of a registry version."""
        return cls(
            name=version.name,
            version=version.version,
            stage=version.stage,
            architecture=version.architecture,
            run_id=version.run_id,
            scenario=version.scenario,
            rounds=version.rounds,
            institutions=version.institutions,
            encryption=version.encryption,
            metrics=version.metrics,
            evaluation=version.evaluation,
            artifact_sha256=version.artifact_sha256,
            registered_by=version.registered_by,
            created_at=version.created_at,
            published_at=version.published_at,
            history=version.history,
            features=version.features,
            serves_predictions=(version.stage is Stage.PRODUCTION and version.features is not None),
        )


# -- patient records ---------------------------------------------------------------------


def _clinical(source: type[BaseModel], name: str, unit: str, **extra: Any) -> Any:
    """A field with the range and description of ``source``'s field and a ``unit``.

    The bounds are read from the common schema, so that the API accepts exactly the ranges
    the training data were validated against.
    """
    info = source.model_fields[name]
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            bounds["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            bounds["le"] = item.le
    description = info.description or name
    if unit not in description:
        description = f"{description} ({unit})"
    return Field(**bounds, **extra, description=description, json_schema_extra={"unit": unit})


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" is any number without a fraction, 3.0 included; a boolean
    # is not a number (strict validation refuses it, and strings, afterwards).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_integral), Strict()]
"""An integer field: 3 and 3.0 are accepted, true, "3" and 3.5 are not."""
Flag = Annotated[
    int, Field(ge=0, le=1, description="0 = no, 1 = yes"), BeforeValidator(_integral), Strict()
]


class _Patient(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class HeartDiseasePatient(_Patient):
    """One patient for ``heart-disease-diagnosis`` (UCI heart disease features, UCI units)."""

    age: WholeNumber = _clinical(HeartDiseaseRecord, "age", "years")
    sex: Literal["Male", "Female"]
    chest_pain: ChestPain
    resting_bp: float = _clinical(HeartDiseaseRecord, "resting_bp", "mmHg", allow_inf_nan=False)
    cholesterol: float = _clinical(HeartDiseaseRecord, "cholesterol", "mg/dl", allow_inf_nan=False)
    fasting_blood_sugar_high: bool = Field(description="fasting blood sugar > 120 mg/dl")
    resting_ecg: RestingEcg
    max_heart_rate: float = _clinical(
        HeartDiseaseRecord, "max_heart_rate", "beats/min", allow_inf_nan=False
    )
    exercise_angina: bool = Field(description="angina induced by exercise")
    st_depression: float = _clinical(HeartDiseaseRecord, "st_depression", "mm", allow_inf_nan=False)


class FraminghamPatient(_Patient):
    """One participant for ``coronary-risk-10y`` (Framingham features and units).

    Every feature is required except ``cigarettes_per_day`` for non-smokers (0 is used):
    training filled other missing values with the task's reference values, but a clinician
    asking for one patient's risk should give what was measured, so the API does not guess.
    The schema says so too (``anyOf``): a current smoker has a number of cigarettes per day.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"properties": {"current_smoker": {"const": 0}}},
                {
                    "required": ["cigarettes_per_day"],
                    "properties": {"cigarettes_per_day": {"type": "number"}},
                },
            ]
        },
    )

    male: Flag
    age: WholeNumber = _clinical(FraminghamRecord, "age", "years")
    current_smoker: Flag
    cigarettes_per_day: float | None = _clinical(
        FraminghamRecord, "cigarettes_per_day", "cigarettes/day", allow_inf_nan=False, default=None
    )
    bp_medication: Flag
    prevalent_stroke: Flag
    prevalent_hypertension: Flag
    diabetes: Flag
    total_cholesterol: float = _clinical(
        FraminghamRecord, "total_cholesterol", "mg/dl", allow_inf_nan=False
    )
    systolic_bp: float = _clinical(FraminghamRecord, "systolic_bp", "mmHg", allow_inf_nan=False)
    diastolic_bp: float = _clinical(FraminghamRecord, "diastolic_bp", "mmHg", allow_inf_nan=False)
    bmi: float = _clinical(FraminghamRecord, "bmi", "kg/m2", allow_inf_nan=False)
    heart_rate: float = _clinical(FraminghamRecord, "heart_rate", "beats/min", allow_inf_nan=False)
    glucose: float = _clinical(FraminghamRecord, "glucose", "mg/dl", allow_inf_nan=False)

    @model_validator(mode="after")
    def _smoking(self) -> FraminghamPatient:
        if self.current_smoker == 1 and self.cigarettes_per_day is None:
            raise ValueError(
                "cigarettes_per_day is required for a current smoker (0 to 100 cigarettes/day)"
            )
        return self


PATIENT_TYPES: Mapping[InputSchema, type[BaseModel]] = MappingProxyType(
    {"heart-disease": HeartDiseasePatient, "framingham": FraminghamPatient}
)
"""Built-in input schema of a model (its transform's ``schema``) -> the patient record it
reads."""


@dataclass(frozen=True)
class RecordSchema:
    """What a served model's route reads: a built-in input schema or a county task's record.

    Built once per service (:func:`served_records`), so that the API's routes, the referral
    body and the console's forms share one record type per model.
    """

    name: str
    """The built-in schema's name (``heart-disease``, ``framingham``) or the task's name."""
    record_type: type[BaseModel]
    task: TaskDefinition | None = field(default=None, compare=False, repr=False)
    """The county's task the records are defined by; None for a built-in schema."""


BUILT_IN_RECORDS: Mapping[str, RecordSchema] = MappingProxyType(
    {name: RecordSchema(name, record_type) for name, record_type in PATIENT_TYPES.items()}
)


def task_record_type(task: TaskDefinition) -> type[BaseModel]:
    """The API's patient record of a county's task: one field per feature, in its unit.

    Numbers carry the task's plausible range and unit (shown in OpenAPI and in a 422
    body), whole numbers are integers, yes/no features are booleans, categories their
    levels. A feature the task fills when missing may be left out (null). Field names are the
    features' names with '-' as '_'.
    """
    fields: dict[str, Any] = {}
    for feature in task.features:
        description = feature.description or feature.name
        base: Any
        if feature.type is FeatureType.NUMBER:
            assert feature.range is not None
            base = WholeNumber if feature.integer else float
            about: dict[str, Any] = {
                "ge": feature.range[0],
                "le": feature.range[1],
                "allow_inf_nan": False,
                "description": f"{description} ({feature.unit})",
                "json_schema_extra": {"unit": feature.unit},
            }
        elif feature.type is FeatureType.YES_NO:
            base = StrictBool
            about = {"description": f"{description} (yes/no)"}
        else:
            base = Literal[feature.categories]
            about = {"description": f"{description} (one of {', '.join(feature.categories)})"}
        if feature.missing is MissingRule.FILL:
            # The task fills a missing value with its fixed constant: the field may be left out.
            fields[field_name(feature.name)] = (Annotated[base | None, Field(**about)], None)
        else:
            fields[field_name(feature.name)] = (Annotated[base, Field(**about)], ...)
    model: type[BaseModel] = create_model(
        f"{_title(task.name)}Patient",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=f"One patient for a model of the task {task.name!r}: {task.intended_use}",
        **fields,
    )
    return model


def field_name(feature: str) -> str:
    """The API field of a task's feature: its name with '-' as '_'."""
    return feature.replace("-", "_")


def served_records(served: Mapping[str, str | TaskDefinition]) -> dict[str, RecordSchema]:
    """What each served model reads: the referral rules' ``served_models`` made record types.

    Models of the same task share one record type (one OpenAPI schema).

    Raises
    ------
    ReferralConfigError
        If a task's name is a built-in schema's, or two different tasks share a name (the
        API's schema names would clash).
    """
    found: dict[str, RecordSchema] = {}
    by_task: dict[str, RecordSchema] = {}
    for model, source in served.items():
        if isinstance(source, str):
            found[model] = BUILT_IN_RECORDS[source]
            continue
        if source.name in BUILT_IN_RECORDS:
            raise ReferralConfigError(
                f"[models.{model}]: the task is named {source.name!r}, like a built-in input "
                "schema; rename the task (its name field) or use schema = "
                f"{source.name!r}"
            )
        known = by_task.get(source.name)
        if known is None:
            known = by_task[source.name] = RecordSchema(
                source.name, task_record_type(source), source
            )
        elif known.task != source:
            raise ReferralConfigError(
                f"[models.{model}]: two different task files are named {source.name!r}; "
                "a task name must name one task"
            )
        found[model] = known
    return found


ModelName = Annotated[str, Field(pattern=NAME_PATTERN, examples=["heart-disease-diagnosis"])]


# -- predictions -------------------------------------------------------------------------


class PredictionCreate(_Schema):
    """One patient (``patient``) or a batch (``patients``) for a model's production version.

    Each model has its own body (:func:`prediction_body`), whose records are the model's
    own patient schema; this base only carries what they share.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["patient"]}, {"required": ["patients"]}]},
    )

    purpose: Purpose = Purpose.TREATMENT

    @model_validator(mode="after")
    def _one_or_batch(self) -> PredictionCreate:
        patient, patients = getattr(self, "patient", None), getattr(self, "patients", None)
        if (patient is None) == (patients is None):
            raise ValueError("give either 'patient' (one record) or 'patients' (a list), not both")
        return self

    @property
    def records(self) -> list[BaseModel]:
        """The patient records, one or many (validated against the model's schema)."""
        patient: BaseModel | None = getattr(self, "patient", None)
        patients: list[BaseModel] | None = getattr(self, "patients", None)
        return [patient] if patient is not None else list(patients or [])

    @property
    def locations(self) -> list[str]:
        """Where each record is in the request, e.g. ``patient`` or ``patients[3]``."""
        if getattr(self, "patient", None) is not None:
            return ["patient"]
        return [f"patients[{index}]" for index in range(len(self.records))]


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^a-z0-9]+", name) if part)


@cache
def prediction_body(schema: RecordSchema, max_batch: int) -> type[PredictionCreate]:
    """The request body of a model reading ``schema`` records, at most ``max_batch`` of them.

    Named ``HeartDiseasePredictionCreate`` / ``FraminghamPredictionCreate`` (or after the
    task) in OpenAPI.
    """
    patient_type: Any = schema.record_type
    # Neither field may be null, and exactly one must be given: the schema says so too
    # (oneOf), so that every request valid by the spec is one the API accepts.
    fields: dict[str, Any] = {
        "patient": (patient_type, None),
        "patients": (
            Annotated[list[patient_type], Field(min_length=1, max_length=max_batch)],
            None,
        ),
    }
    body: type[PredictionCreate] = create_model(
        f"{_title(schema.name)}PredictionCreate",
        __base__=PredictionCreate,
        __doc__=f"One {patient_type.__name__} (``patient``) or up to {max_batch} (``patients``).",
        **fields,
    )
    return body


class ModelRefPublic(_Schema):
    """Exactly which model answered: name, version and the artifact's sha256."""

    name: str
    version: int
    sha256: str


class FeatureContributionPublic(_Schema):
    """How much one input feature pushed the prediction, in log-odds."""

    feature: str
    """The model's feature, e.g. ``cholesterol`` or ``chest-pain-asymptomatic``."""
    field: str
    """The patient field it comes from, e.g. ``chest_pain``."""
    value: float | int | bool | str | None
    unit: str | None
    contribution: float
    direction: Literal["raises-risk", "lowers-risk"]


class PatientPredictionPublic(_Schema):
    """The model's answer for one patient."""

    probability: float
    risk_band: RiskBand
    top_features: list[FeatureContributionPublic]


class PredictionPublic(_Schema):
    """The answer to a prediction request; ``audit_entry`` is its audit log entry number."""

    model: ModelRefPublic
    purpose: Purpose
    input_sha256: str
    audit_entry: int
    explanation: Literal["weight-times-standardized-value", "gradient-times-input"]
    predictions: list[PatientPredictionPublic]


# -- referrals ---------------------------------------------------------------------------


class SymptomCreate(_Schema):
    """A symptom the patient has (a code of the referral rules) and its severity.

    The API's own body (:func:`referral_body`) lists the codes the county's rules know.
    """

    code: Annotated[str, Field(pattern=CODE_PATTERN, examples=["chest-pain"])]
    severity: Severity


class ReferralPatientCreate(_Schema):
    """What the referral rules need to know about the patient.

    A symptom code given more than once counts once, with its highest severity.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"properties": {"pregnant": {"const": False}}},
                {
                    "required": ["pregnant", "sex", "age_years"],
                    "properties": {"sex": {"const": "female"}, "age_years": {"minimum": 10}},
                },
            ]
        },
    )

    age_years: Annotated[
        float,
        Strict(),
        Field(
            ge=0,
            le=120,
            allow_inf_nan=False,
            description="age in years; fractions for infants (0.5 = six months)",
            json_schema_extra={"unit": "years"},
        ),
    ]
    sex: Literal["female", "male"]
    pregnant: StrictBool = False
    symptoms: Annotated[list[SymptomCreate], Field(max_length=30)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _plausible(self) -> ReferralPatientCreate:
        if self.pregnant and (self.sex != "female" or self.age_years < 10):
            raise ValueError("pregnant is only possible for a female patient aged 10 or over")
        return self

    @property
    def distinct_symptoms(self) -> list[SymptomCreate]:
        """Each code once, with the highest severity it was given, in first-seen order."""
        found: dict[str, SymptomCreate] = {}
        for symptom in self.symptoms:
            seen = found.get(symptom.code)
            if seen is None or SEVERITY_RANK[symptom.severity] > SEVERITY_RANK[seen.severity]:
                found[symptom.code] = symptom
        return list(found.values())


class ReferralCreate(_Schema):
    """A request for referral advice, optionally weighing a model's risk.

    ``risk`` names a served model and gives the patient in that model's own schema
    (:func:`referral_body` builds one union member per model, told apart by ``model``).
    """

    purpose: Purpose = Purpose.REFERRAL
    patient: ReferralPatientCreate
    risk: Any = None

    @property
    def risk_model(self) -> str | None:
        """The model asked for the risk, if any."""
        return None if self.risk is None else str(self.risk.model)


@cache
def referral_body(
    models: tuple[tuple[str, RecordSchema], ...], symptom_codes: tuple[str, ...]
) -> type[ReferralCreate]:
    """The referral request body for the served ``(model name, input schema)`` pairs and
    the symptom codes the referral rules know (listed in the schema as an enum)."""
    code_field: dict[str, Any] = {
        "code": (Literal[symptom_codes], Field(examples=[symptom_codes[0]])),
    }
    symptom = create_model("SymptomCreate", __base__=SymptomCreate, **code_field)
    symptoms_field: dict[str, Any] = {
        "symptoms": (
            Annotated[list[symptom], Field(max_length=30)],  # type: ignore[valid-type]
            Field(default_factory=list),
        )
    }
    patient = create_model(
        "ReferralPatientCreate",
        __base__=ReferralPatientCreate,
        __doc__=ReferralPatientCreate.__doc__,
        **symptoms_field,
    )
    members = []
    for name, schema in models:
        member: dict[str, Any] = {
            "model": (Literal[name], ...),
            "patient": (schema.record_type, ...),
        }
        members.append(
            create_model(
                f"{_title(name)}RiskCreate",
                __base__=_Schema,
                __doc__=f"Ask {name}'s production version for the patient's risk.",
                **member,
            )
        )
    fields: dict[str, Any] = {"patient": (patient, ...)}
    if members:
        union: Any = members[0]
        for alternative in members[1:]:
            union = union | alternative
        risk_type: Any = (
            Annotated[union, Field(discriminator="model")] if len(members) > 1 else union
        )
        fields["risk"] = (risk_type | None, None)
    else:
        fields["risk"] = (None, None)
    body: type[ReferralCreate] = create_model(
        "ReferralCreate", __base__=ReferralCreate, __doc__=ReferralCreate.__doc__, **fields
    )
    return body


class DoctorPublic(_Schema):
    """The recommended specialist."""

    id: str
    name: str
    institution: str
    institution_name: str
    level: CareLevel
    current_load: int
    capacity: int
    skills: list[str]


class RiskPublic(_Schema):
    """The model's risk that the advice took into account."""

    model: ModelRefPublic
    probability: float
    risk_band: RiskBand


class ReferralPublic(_Schema):
    """Referral advice: level of care, urgency, specialist, and every reason."""

    level: CareLevel
    urgency: Urgency
    specialty: str
    specialist: DoctorPublic | None
    fallback: str | None
    special_populations: list[str]
    red_flags: list[str]
    reasons: list[str]
    risk: RiskPublic | None
    purpose: Purpose
    input_sha256: str
    audit_entry: int


class HealthPublic(_Schema):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"
