"""Console forms: bounded form bodies, and patient forms generated from a model's schema.

A patient form is never written by hand: its fields, units, ranges and choices come from
the patient record type the API's own prediction body reads
(:func:`countyfl.serving.schemas.prediction_body` of the model's input schema), so the
form and the API cannot disagree. Typed text is converted to the record's types here and
then validated by that record type; problems come back per field, with the expected range
and unit, never the value typed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin
from urllib.parse import parse_qs

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from countyfl.serving.errors import FieldProblem
from countyfl.serving.features import describe_field, field_problems
from countyfl.serving.schemas import RecordSchema, prediction_body

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 200
MAX_VALUE_CHARS = 200
"""Longest value of an ordinary field; longer ones are refused, never cut."""
LONG_FIELDS: Mapping[str, int] = {"evaluation_csv": 60_000, "reason": 500, "password": 1024}
"""Fields allowed to be longer, and their limits."""

FieldKind = Literal["integer", "number", "choice", "yes-no", "flag"]


class FormError(ValueError):
    """A form body that cannot be read (wrong type, too many or too long fields)."""


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """A urlencoded form body as ``name -> value``, each name given at most once.

    Raises
    ------
    FormError
        If the body is not a UTF-8 urlencoded form, repeats a field, or holds too many or
        too long fields.
    """
    if not body:
        return {}
    if content_type.split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
        raise FormError("the form was not sent as a web form; reload the page and try again")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise FormError("the form could not be read; reload the page and try again") from None
    form: dict[str, str] = {}
    for name, values in parsed.items():
        limit = LONG_FIELDS.get(name, MAX_VALUE_CHARS)
        if len(values) != 1 or len(name) > 64 or len(values[0]) > limit:
            raise FormError(
                "a field of the form was repeated or too long; reload the page and try again"
            )
        form[name] = values[0]
    return form


@dataclass(frozen=True)
class PatientField:
    """One input of a patient form, described for a person."""

    name: str
    label: str
    kind: FieldKind
    required: bool
    unit: str | None
    expected: str | None
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...]
    help: str

    @property
    def step(self) -> str:
        """The HTML ``step`` of a number input."""
        return "1" if self.kind == "integer" else "any"


def patient_type(schema: RecordSchema) -> type[BaseModel]:
    """The patient record type the API's prediction body reads for ``schema``."""
    body = prediction_body(schema, 1)
    found = _model_in(body.model_fields["patient"].annotation)
    if found is None:  # pragma: no cover - the API's body always names a record type
        raise TypeError(f"the {schema} prediction body names no patient record type")
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Le):
            high = item.le
    return (
        None if low is None else float(low),  # type: ignore[arg-type]
        None if high is None else float(high),  # type: ignore[arg-type]
    )


def _base(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None``, and whether ``None`` was allowed."""
    args = get_args(annotation)
    if get_origin(annotation) is not Literal and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


def _label(name: str) -> str:
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def patient_fields(record_type: type[BaseModel]) -> list[PatientField]:
    """The form inputs of ``record_type``, in its field order."""
    fields = []
    for name, info in record_type.model_fields.items():
        base, optional = _base(info.annotation)
        expected, unit = describe_field(info)
        low, high = _bounds(info)
        choices: tuple[str, ...] = ()
        kind: FieldKind
        if get_origin(base) is Literal:
            kind, choices = "choice", tuple(str(arg) for arg in get_args(base))
        elif base is bool:
            kind = "yes-no"
        elif base is int and low == 0 and high == 1:
            kind = "flag"
        elif base is int:
            kind = "integer"
        else:
            kind = "number"
        description = info.description or ""
        if kind == "flag" and description.startswith("0 = no"):
            description = ""
        fields.append(
            PatientField(
                name=name,
                label=_label(name),
                kind=kind,
                required=info.is_required() and not optional,
                unit=unit,
                expected=expected,
                minimum=low,
                maximum=high,
                choices=choices,
                help=_help(description, expected, unit, kind),
            )
        )
    return fields


def _help(description: str, expected: str | None, unit: str | None, kind: FieldKind) -> str:
    parts = []
    if description and description != unit:
        parts.append(description)
    if kind in ("integer", "number") and expected:
        parts.append(f"{expected}{' ' + unit if unit else ''}")
    return "; ".join(parts)


_INTEGER = re.compile(r"[+-]?\d{1,9}")


def read_patient(
    fields: list[PatientField], form: Mapping[str, str], record_type: type[BaseModel]
) -> tuple[BaseModel | None, dict[str, str]]:
    """The record typed into a patient form, or the problems by field name.

    Every problem is a sentence for a person: what is wrong and what the form expects.
    """
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field in fields:
        text = form.get(field.name, "").strip()
        if not text:
            if field.required:
                problems[field.name] = "Please fill this in" + _expecting(field)
            continue
        try:
            values[field.name] = _convert(field, text)
        except ValueError:
            problems[field.name] = "This is not a valid answer" + _expecting(field)
    try:
        record = record_type.model_validate(values)
    except ValidationError as error:
        for problem in field_problems(error, record_type, ""):
            name = problem.field.split(".")[0]
            key = name if name in record_type.model_fields else "form"
            problems.setdefault(key, _sentence(problem))
        return None, problems
    return (None, problems) if problems else (record, {})


def _expecting(field: PatientField) -> str:
    if field.kind in ("integer", "number") and field.expected:
        return f": {field.expected}{' ' + field.unit if field.unit else ''}."
    if field.kind == "choice":
        return ": choose one of the options."
    return "."


def _convert(field: PatientField, text: str) -> Any:
    if field.kind == "integer":
        if not _INTEGER.fullmatch(text):
            raise ValueError(text)
        return int(text)
    if field.kind == "number":
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    if field.kind == "yes-no":
        if text not in ("yes", "no"):
            raise ValueError(text)
        return text == "yes"
    if field.kind == "flag":
        if text not in ("1", "0"):
            raise ValueError(text)
        return int(text)
    if text not in field.choices:
        raise ValueError(text)
    return text


def _sentence(problem: FieldProblem) -> str:
    text = problem.problem
    if "_" not in text.split(" ")[0]:  # a field name stays as the form shows it
        text = text[:1].upper() + text[1:]
    if problem.expected:
        text += f" (expected {problem.expected}{' ' + problem.unit if problem.unit else ''})"
    return text + ("" if text.endswith(".") else ".")
