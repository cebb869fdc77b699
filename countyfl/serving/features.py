"""Patient record -> model input: validation against the clinical schema, encoding, scaling.

The encoding is training's own (``countyfl.data.fed_heart_disease.encode`` and the
Framingham feature order); the scaling is the model's stored transform
(``FeatureTransform``): ``(raw - mean) / scale``. A 422 names the field, the range and the
unit; it never repeats the rejected value, so problems can be audited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import annotated_types
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from countyfl.clinical.task import FeatureType, TaskDefinition
from countyfl.data import fed_heart_disease, framingham
from countyfl.data.schema import HeartDiseaseRecord
from countyfl.registry.schemas import FeatureTransform, InputSchema
from countyfl.serving.errors import FieldProblem, InvalidRecordError, ModelNotServingError
from countyfl.serving.schemas import (
    FraminghamPatient,
    HeartDiseasePatient,
    field_name,
    task_record_type,
)

# encode() reads neither the hospital nor the diagnosis, but the record type requires both.
_UNUSED_HOSPITAL = "Cleveland"
_UNUSED_DIAGNOSIS = 0


@dataclass(frozen=True)
class InputSpec:
    """One clinical schema: its API record type, its encoder and the feature -> field map."""

    name: InputSchema
    record_type: type[BaseModel]
    feature_names: tuple[str, ...]
    encoder: Callable[[Any], list[float]]
    feature_fields: Mapping[str, str]
    """Model feature -> the patient field it is computed from."""

    def encode(self, record: BaseModel) -> list[float]:
        """The raw (unscaled) feature vector of one validated record."""
        return self.encoder(record)


def _encode_heart(record: HeartDiseasePatient) -> list[float]:
    full = HeartDiseaseRecord.model_validate(
        {**record.model_dump(), "hospital": _UNUSED_HOSPITAL, "diagnosis": _UNUSED_DIAGNOSIS}
    )
    return fed_heart_disease.encode(full)


def _encode_framingham(record: FraminghamPatient) -> list[float]:
    values = record.model_dump()
    if values["cigarettes_per_day"] is None:  # a non-smoker: the schema checked
        values["cigarettes_per_day"] = 0.0
    return [float(values[name]) for name in framingham.FEATURES]


def _fields(names: Sequence[str], prefixes: Mapping[str, str]) -> dict[str, str]:
    """Feature -> field: a prefix match names the field (one-hot levels), else snake_case."""
    found = {}
    for name in names:
        field = next((f for p, f in prefixes.items() if name.startswith(p)), None)
        found[name] = field or name.replace("-", "_")
    return found


SPECS: Mapping[str, InputSpec] = {
    "heart-disease": InputSpec(
        name="heart-disease",
        record_type=HeartDiseasePatient,
        feature_names=fed_heart_disease.FEATURE_NAMES,
        encoder=_encode_heart,
        feature_fields=_fields(
            fed_heart_disease.FEATURE_NAMES,
            {"sex-": "sex", "chest-pain-": "chest_pain", "resting-ecg-": "resting_ecg"},
        ),
    ),
    "framingham": InputSpec(
        name="framingham",
        record_type=FraminghamPatient,
        feature_names=framingham.FEATURE_NAMES,
        encoder=_encode_framingham,
        feature_fields=_fields(framingham.FEATURE_NAMES, {}),
    ),
}
"""Clinical schema name (``FeatureTransform.input_schema``) -> its input specification."""


def spec_for(transform: FeatureTransform, label: str) -> InputSpec:
    """The input specification of a stored transform, checked against the encoder.

    Raises
    ------
    ModelNotServingError
        If the transform's feature names are not what the schema's encoder produces (the
        model was trained on another encoding and would read the wrong numbers).
    """
    if transform.task is not None:
        return task_spec(transform.task)
    spec = SPECS[transform.input_schema]
    if tuple(transform.names) != spec.feature_names:
        raise ModelNotServingError(
            f"{label} cannot serve: its input transform names the features "
            f"{transform.names}, but the {spec.name} encoding produces {list(spec.feature_names)}; "
            "publish the model again with this version of countyfl"
        )
    return spec


def task_spec(task: TaskDefinition) -> InputSpec:
    """The input specification of a model trained on a county's task file."""
    from countyfl.clinical.dataset import encode

    record_type = task_record_type(task)
    fields = {f.name: field_name(f.name) for f in task.features}

    def _encode(record: BaseModel) -> list[float]:
        values = record.model_dump()
        row: dict[str, Any] = {}
        for feature in task.features:
            value = values.get(fields[feature.name])
            if value is None or feature.type is FeatureType.CATEGORY:
                row[feature.name] = value
            else:
                row[feature.name] = float(value)
        task.fill_missing(row)
        return encode(task, row)

    return InputSpec(
        name="task",
        record_type=record_type,
        feature_names=task.feature_names,
        encoder=_encode,
        feature_fields={name: fields[f.name] for f in task.features for name in f.encoded_names()},
    )


def validate_records(
    spec: InputSpec, records: Sequence[Mapping[str, Any]], locations: Sequence[str]
) -> list[BaseModel]:
    """Every record validated against ``spec``'s clinical schema.

    Parameters
    ----------
    spec : InputSpec
        The schema of the model that will read the records.
    records : sequence of mapping
        The records as sent.
    locations : sequence of str
        Where each record is in the request, e.g. ``patients[3]`` or ``risk.patient``.

    Raises
    ------
    InvalidRecordError
        Naming every bad field with the range and unit expected (never the value sent).
    """
    valid: list[BaseModel] = []
    problems: list[FieldProblem] = []
    for record, where in zip(records, locations, strict=True):
        try:
            valid.append(spec.record_type.model_validate(record))
        except ValidationError as error:
            problems.extend(field_problems(error, spec.record_type, where))
    if problems:
        raise InvalidRecordError(
            f"the patient record does not fit the {spec.name} schema of this model: "
            + "; ".join(_sentence(p) for p in problems),
            problems,
        )
    return valid


def field_problems(
    error: ValidationError, record_type: type[BaseModel] | None, prefix: str
) -> list[FieldProblem]:
    """A pydantic error as field problems, with ranges and units from ``record_type``."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        parts = [str(part) for part in item["loc"]]
        field = ".".join([prefix, *parts]) if prefix else ".".join(parts)
        info = None
        if record_type is not None and parts:
            info = record_type.model_fields.get(parts[0])
        expected, unit = describe_field(info) if info is not None else (None, None)
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden" and record_type is not None:
            message = (
                f"unknown field; the {record_type.__name__} fields are "
                f"{', '.join(record_type.model_fields)}"
            )
        problems.append(FieldProblem(field=field, problem=message, expected=expected, unit=unit))
    return problems


def describe_field(info: FieldInfo) -> tuple[str | None, str | None]:
    """(expected values or range, unit) of a schema field, for a 422 body."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    unit = extra.get("unit")
    low = high = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Le):
            high = item.le
    choices = _choices(info.annotation)
    if choices:
        expected = "one of " + ", ".join(repr(choice) for choice in choices)
    elif low is not None and high is not None:
        expected = f"{low} to {high}"
    elif info.annotation is bool:
        expected = "true or false"
    else:
        expected = None
    return expected, unit if isinstance(unit, str) else None


def _choices(annotation: Any) -> list[Any]:
    args = get_args(annotation)
    if args and all(isinstance(arg, str) for arg in args):
        return list(args)
    return []


def _sentence(problem: FieldProblem) -> str:
    text = f"{problem.field}: {problem.problem}"
    if problem.expected:
        text += f" (expected {problem.expected}{' ' + problem.unit if problem.unit else ''})"
    return text


def standardize(
    spec: InputSpec, records: Sequence[BaseModel], transform: FeatureTransform
) -> npt.NDArray[np.float32]:
    """The model input of validated records: encoded, then ``(raw - mean) / scale``."""
    raw = np.asarray([spec.encode(record) for record in records], dtype=np.float64)
    mean = np.asarray(transform.mean, dtype=np.float64)
    scale = np.asarray(transform.scale, dtype=np.float64)
    return ((raw - mean) / scale).astype(np.float32)
