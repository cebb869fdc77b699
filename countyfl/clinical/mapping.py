"""A site's data mapping: its export's columns, units and codes onto a task's features.

The ``[data]`` table of a site.toml (and ``packaged_data.mapping`` of a built-in task)
says which column holds each of the task's features and its label, in which unit, with
which codes, how numbers are written (thousands separators, decimal commas), which
dates give an age, which columns identify a patient (pseudonymised with the site's
secret) and which are direct identifiers (dropped before anything else reads a row).
Example::

    [data]
    format = "csv"                   # csv, excel, sql or fhir (countyfl.clinical.fhir)
    path = "exports/heart-failure.csv"
    decimal = ","                    # 1.234,5 -> 1234.5
    thousands = "."
    drop = ["name", "phone", "address", "national_id"]
    identifiers = ["patient_no"]     # -> HMAC-SHA256 pseudonym with the site secret

    [data.columns]                   # task name -> the export's column
    creatinine = "Kreatinin"
    sex-male = "Geschlecht"
    death = "verstorben"

    [data.units]                     # the export's unit, converted to the task's (pint)
    creatinine = "umol/L"

    [data.codes.sex-male]            # the export's code -> the task's value
    M = "yes"
    F = "no"

    [data.dates.age]                 # an age from two dates (or a fixed date "at")
    birth = "geburtsdatum"
    at = "aufnahmedatum"
    format = "%d.%m.%Y"

:func:`map_rows` applies a mapping to a frame read by an adapter and returns the valid
rows in the task's units and codes, with one quarantine entry per problem: the export's
column, the original value (with its unit) and the reason.
"""

from __future__ import annotations

import decimal
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from countyfl.clinical.task import (
    NAME_PATTERN,
    FeatureType,
    MissingRule,
    TaskDefinition,
)
from countyfl.data.quarantine import QuarantinedRow
from countyfl.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    import pandas as pd
    import pint

Column = Annotated[str, Field(min_length=1, max_length=200)]
CodeText = Annotated[str, Field(max_length=200)]
MAX_COLUMNS = 1000

YES_CODES = frozenset({"yes", "y", "true", "t", "1"})
NO_CODES = frozenset({"no", "n", "false", "f", "0"})


class MappingError(ConfigError):
    """A site's data mapping does not fit its export or its task."""


class AgeFromDates(BaseModel):
    """An age in whole years from a birth date and a reference date (a column or a date)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    birth: Column
    at: Column | None = None
    """The column holding the date the age is taken at (an admission, a visit)."""
    at_date: date | None = None
    """A fixed date instead of a column."""
    format: str = Field(default="%Y-%m-%d", min_length=2, max_length=40)

    @model_validator(mode="after")
    def _one_reference(self) -> AgeFromDates:
        if (self.at is None) == (self.at_date is None):
            raise ValueError("give either at (a column) or at_date (a fixed date), not both")
        return self


class DataMapping(BaseModel):
    """How a site's export maps onto a task (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    columns: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Column] = Field(
        default_factory=dict, max_length=MAX_COLUMNS
    )
    """Task feature or label -> the export's column; unnamed ones use the task's name."""
    units: dict[str, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict, max_length=MAX_COLUMNS
    )
    codes: dict[str, dict[CodeText, CodeText]] = Field(default_factory=dict, max_length=MAX_COLUMNS)
    dates: dict[str, AgeFromDates] = Field(default_factory=dict, max_length=100)
    decimal: Literal[".", ","] = "."
    thousands: Literal["", ",", ".", " ", "'", "\u202f"] = ""
    identifiers: tuple[Column, ...] = Field(default=(), max_length=20)
    drop: tuple[Column, ...] = Field(default=(), max_length=MAX_COLUMNS)

    @model_validator(mode="after")
    def _separators(self) -> DataMapping:
        if self.thousands and self.thousands == self.decimal:
            raise ValueError("decimal and thousands separators must differ")
        return self

    def column_of(self, name: str) -> str:
        return self.columns.get(name, name)


@lru_cache(maxsize=1)
def unit_registry() -> pint.UnitRegistry:  # type: ignore[type-arg]
    """pint's registry (built once: about a second)."""
    import pint

    return pint.UnitRegistry()


def _parse_unit(text: str) -> pint.Quantity:  # type: ignore[type-arg]
    registry = unit_registry()
    quantity = registry.parse_expression(text)
    if not isinstance(quantity, registry.Quantity):
        quantity = registry.Quantity(float(quantity), "dimensionless")
    return quantity


def unit_factor(source: str, target: str, *, molar_mass: float | None = None) -> float:
    """The factor that turns a value in ``source`` units into ``target`` units.

    Mass and substance concentrations convert through ``molar_mass`` (g/mol).
    Raises ValueError saying why when the units are unknown or incompatible.
    """
    import pint

    try:
        start, end = _parse_unit(source), _parse_unit(target)
    except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError) as error:
        raise ValueError(f"unknown unit ({error})") from None
    except Exception as error:  # pint's parser raises several kinds for bad syntax
        raise ValueError(f"not a unit ({error})") from None
    try:
        return float(start.to(end.units).magnitude / end.magnitude)
    except pint.errors.DimensionalityError:
        pass
    if molar_mass is not None:
        registry = unit_registry()
        mass = registry.Quantity(molar_mass, "g/mol")
        for candidate in (start * mass, start / mass):
            try:
                return float(candidate.to(end.units).magnitude / end.magnitude)
            except pint.errors.DimensionalityError:
                continue
    hint = "" if molar_mass is not None else "; for mass <-> substance, the task needs molar_mass"
    raise ValueError(
        f"{source!r} ({start.dimensionality}) cannot be converted to {target!r} "
        f"({end.dimensionality}){hint}"
    )


def code_text(value: object) -> str:
    """A code as text: ``1``, ``1.0`` and ``True`` become ``1``, ``1`` and ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Real | decimal.Decimal):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number.is_integer() else text


def shown_number(value: object) -> str:
    """A number for a quarantine entry: as written (text), or ``2000`` for a typed 2000.0."""
    return value if isinstance(value, str) else code_text(value)


def is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


@dataclass(frozen=True)
class CheckedMapping:
    """A mapping checked against its task and export: conversion factors resolved."""

    task: TaskDefinition
    mapping: DataMapping
    factors: dict[str, float]
    where: str


def check_mapping(
    task: TaskDefinition,
    mapping: DataMapping,
    columns: Sequence[str],
    *,
    where: str,
    extra_columns: Sequence[str] = (),
) -> CheckedMapping:
    """Check ``mapping`` against the task and the export's ``columns`` before any row is read.

    Raises MappingError naming ``where`` (the site.toml) and the key: a mapping to a
    column the export lacks, a key that is not a task feature, an impossible unit, a code
    that maps onto no value of the task.
    """
    problems: list[str] = []
    known = {f.name for f in task.features} | {task.label.column}
    present = set(columns)
    for key, kind in (
        *((k, "columns") for k in mapping.columns),
        *((k, "units") for k in mapping.units),
        *((k, "codes") for k in mapping.codes),
        *((k, "dates") for k in mapping.dates),
    ):
        if key not in known:
            problems.append(
                f"data.{kind}.{key}: {task.name} has no feature or label {key!r}; its names "
                f"are {', '.join(sorted(known))}"
            )
    for name in sorted(known):
        if name in mapping.dates:
            spec = mapping.dates[name]
            for role, column in (("birth", spec.birth), ("at", spec.at)):
                if column is not None and column not in present:
                    problems.append(
                        f"data.dates.{name}.{role}: the export has no column {column!r}"
                    )
            continue
        column = mapping.column_of(name)
        if column not in present:
            feature = next((f for f in task.features if f.name == name), None)
            if feature is not None and feature.missing is MissingRule.FILL:
                continue  # a fillable feature may be absent from an export altogether
            problems.append(
                f"data.columns.{name} = {column!r}: the export has no such column; its columns "
                f"are {', '.join(map(str, columns))[:1000]}. Name the export's column for {name}"
            )
    mapped = {mapping.column_of(name) for name in known}
    for column in (*mapping.identifiers, *mapping.drop):
        if column in mapped:
            problems.append(
                f"data.columns: {column!r} is an identifier (data.identifiers / data.drop) "
                "and may not be a feature or the label"
            )
    for column in (*extra_columns, *mapping.identifiers):
        if column not in present:
            problems.append(f"the export has no column {column!r} (named in {where})")
    factors: dict[str, float] = {}
    for name, unit in mapping.units.items():
        if name not in known:
            continue
        feature = next((f for f in task.features if f.name == name), None)
        if feature is None or feature.type is not FeatureType.NUMBER or feature.unit is None:
            problems.append(f"data.units.{name}: {name} is not a number feature with a unit")
            continue
        try:
            factors[name] = unit_factor(unit, feature.unit, molar_mass=feature.molar_mass)
        except ValueError as error:
            problems.append(
                f"data.units.{name} = {unit!r}: cannot convert to the task's unit "
                f"{feature.unit!r}: {error}. Fix the unit"
            )
    for name, codes in mapping.codes.items():
        if name not in known:
            continue
        allowed = _allowed_codes(task, name)
        if allowed is None:
            problems.append(
                f"data.codes.{name}: {name} is a number; codes are for yes/no, "
                "categories and the label"
            )
            continue
        for source, target in codes.items():
            if code_text(target).lower() not in allowed:
                problems.append(
                    f"data.codes.{name}.{source!r} = {target!r}: not a value of {name}; "
                    f"use one of {', '.join(sorted(allowed))}"
                )
    if problems:
        raise MappingError(
            "\n".join(f"{where}: {p}" for p in problems)
            + f"\nFix the mapping in {where} (see docs/site-data.md)."
        )
    return CheckedMapping(task, mapping, factors, where)


def _allowed_codes(task: TaskDefinition, name: str) -> set[str] | None:
    if name == task.label.column:
        return {code_text(v).lower() for v in (*task.label.positive, *task.label.negative)}
    feature = task.feature(name)
    if feature.type is FeatureType.YES_NO:
        return set(YES_CODES | NO_CODES)
    if feature.type is FeatureType.CATEGORY:
        return {c.lower() for c in feature.categories}
    return None


@dataclass(frozen=True)
class Measured:
    """A number that carries its own unit (a FHIR valueQuantity): converted row by row.

    ``unit`` is in pint's syntax (empty when the source gave none); ``written`` is the
    unit as the source wrote it (UCUM), which the quarantine shows.
    """

    value: float
    unit: str
    written: str

    def __str__(self) -> str:
        return f"{code_text(self.value)} {self.written}".strip()


@dataclass
class FeatureTally:
    """What mapping did to one feature's cells, over every row read (``node check``)."""

    missing: int = 0
    out_of_range: int = 0
    invalid: int = 0
    """Not a number, an unknown code, a date in another format, a unit that does not convert."""
    converted: int = 0
    """Cells whose unit was converted to the task's."""
    recoded: int = 0
    """Cells whose code was recoded through ``data.codes``."""
    filled: int = 0
    """Missing cells of kept rows filled by the task's rule."""
    observed: list[float | str] = field(default_factory=list)
    """The values of kept rows as read (filled ones excluded), for the distribution."""


@dataclass(frozen=True)
class MappedRows:
    """Valid rows in the task's units and codes, and the quarantine of the others."""

    values: list[dict[str, float | str | None]]
    """Feature -> value (numbers and yes/no as floats, categories as their level)."""
    labels: list[float]
    row_numbers: list[int]
    groups: list[str]
    """The split column's value per valid row ("" without one)."""
    pseudonyms: list[str]
    quarantined: list[QuarantinedRow]
    rows_read: int
    conversions: dict[str, str]
    """Feature -> the conversion applied (for reports and ``node check``)."""
    tallies: dict[str, FeatureTally] = field(default_factory=dict)
    """Feature or label -> what mapping did to its cells (:mod:`countyfl.clinical.quality`)."""


def parse_number(value: object, mapping: DataMapping) -> float:
    """A number as written in the export (decimal comma, thousands separators); ValueError."""
    if isinstance(value, bool):
        raise ValueError("a yes/no value, not a number")
    if isinstance(
        value, numbers.Real | decimal.Decimal
    ):  # a typed cell (Excel, SQL): never re-parsed
        return float(value)
    text = str(value).strip()
    if mapping.thousands:
        text = text.replace(mapping.thousands, "")
    if mapping.decimal == ",":
        text = text.replace(",", ".")
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text):
        raise ValueError("not a number")
    return float(text)


def _parse_date(value: object, fmt: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime().date()  # type: ignore[no-any-return]
    return datetime.strptime(str(value).strip(), fmt).date()


def _age(birth: date, at: date) -> int:
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))


def _collector(problems: list[tuple[str, object, str]]) -> Any:
    def problem(column: str, raw: object, reason: str) -> None:
        problems.append((column, raw, reason))

    return problem


def map_rows(
    frame: pd.DataFrame,
    checked: CheckedMapping,
    *,
    source: str,
    institution: str = "",
    split_column: str | None = None,
    pseudonymise: Any = None,
    row_problems: Mapping[int, Sequence[tuple[str, object, str]]] | None = None,
) -> MappedRows:
    """Map every row of ``frame`` onto the task; quarantine what does not fit.

    Parameters
    ----------
    frame : pandas.DataFrame
        The export as an adapter read it (direct identifiers already dropped).
    checked : CheckedMapping
        From :func:`check_mapping`.
    source : str
        The export's name, written into every quarantine entry.
    institution : str
        The institution written into quarantine entries (a site's own id).
    split_column : str, optional
        A column naming each row's institution (a simulation from one export).
    pseudonymise : callable, optional
        str -> pseudonym of a row's identifiers; the quarantine shows it, never them.
    row_problems : mapping, optional
        1-based row -> (column, value, reason) the adapter found (an invalid FHIR
        resource): the row is quarantined with them.
    """
    task, mapping, factors = checked.task, checked.mapping, checked.factors
    label = task.label
    positive = {code_text(v).lower() for v in label.positive}
    negative = {code_text(v).lower() for v in label.negative}
    lowered_codes = {
        name: {code_text(k).lower(): code_text(v) for k, v in codes.items()}
        for name, codes in mapping.codes.items()
    }
    present = set(map(str, frame.columns))
    values: list[dict[str, float | str | None]] = []
    labels: list[float] = []
    row_numbers: list[int] = []
    groups: list[str] = []
    pseudonyms: list[str] = []
    quarantined: list[QuarantinedRow] = []
    tallies = {name: FeatureTally() for name in (*(f.name for f in task.features), label.column)}
    measured_factors: dict[tuple[str, str], float] = {}

    def measured_factor(name: str, unit: str) -> float:
        """The factor from a cell's own unit to the task's (ValueError: why not)."""
        key = (name, unit)
        if key not in measured_factors:
            feature = task.feature(name)
            if feature.unit is None:
                if unit not in ("", "1"):
                    raise ValueError(f"{name} has no unit in the task")
                measured_factors[key] = 1.0
            elif not unit:
                raise ValueError(f"no unit given ({feature.unit} expected)")
            else:
                measured_factors[key] = unit_factor(
                    unit, feature.unit, molar_mass=feature.molar_mass
                )
        return measured_factors[key]

    for index, row in enumerate(frame.to_dict("records"), start=1):
        pseudonym = ""
        if pseudonymise is not None and mapping.identifiers:
            pseudonym = pseudonymise(
                "\x1f".join(code_text(row.get(c, "")) for c in mapping.identifiers)
            )
        group = "" if split_column is None else code_text(row.get(split_column, ""))
        where = institution or group
        problems: list[tuple[str, object, str]] = list((row_problems or {}).get(index, ()))
        problem = _collector(problems)

        record: dict[str, float | str | None] = {}
        for feature in task.features:
            name = feature.name
            if name in mapping.dates:
                spec = mapping.dates[name]
                column = spec.birth
                birth_raw = row.get(spec.birth)
                at_raw: object = spec.at_date if spec.at is None else row.get(spec.at)
                if is_missing(birth_raw) or is_missing(at_raw):
                    raw: object = None
                else:
                    try:
                        raw = float(
                            _age(
                                _parse_date(birth_raw, spec.format),
                                _parse_date(at_raw, spec.format),
                            )
                        )
                    except (ValueError, TypeError):
                        problem(column, birth_raw, f"not a date in the format {spec.format!r}")
                        tallies[name].invalid += 1
                        continue
            else:
                column = mapping.column_of(name)
                raw = row.get(column) if column in present else None
            tally = tallies[name]
            if is_missing(raw):
                tally.missing += 1
                if feature.missing is MissingRule.QUARANTINE:
                    problem(column, raw, "missing value (the task's rule: quarantine the row)")
                else:
                    record[name] = None  # filled below, once the yes/no it depends on is known
                continue
            codes = lowered_codes.get(name)
            if feature.type is FeatureType.NUMBER:
                if isinstance(raw, Measured):
                    number, unit, shown = raw.value, raw.written, str(raw)
                    try:
                        factor: float | None = measured_factor(name, raw.unit)
                    except ValueError as error:
                        problem(
                            column,
                            shown,
                            f"{raw.written or 'no unit'}: cannot convert to the task's unit "
                            f"{feature.unit}: {error}",
                        )
                        tally.invalid += 1
                        continue
                    if raw.unit == feature.unit:
                        factor = None
                else:
                    try:
                        number = parse_number(raw, mapping)
                    except ValueError as error:
                        problem(column, raw, f"{error} ({feature.unit} expected)")
                        tally.invalid += 1
                        continue
                    unit = mapping.units.get(name, feature.unit) or ""
                    shown = f"{shown_number(raw)} {unit}"
                    factor = factors.get(name)
                converted = number * factor if factor is not None else number
                low, high = feature.range or (-math.inf, math.inf)
                if not low <= converted <= high:
                    after = (
                        f" = {converted:.6g} {feature.unit} after conversion from {unit}"
                        if factor is not None
                        else ""
                    )
                    problem(
                        column,
                        shown,
                        f"{number:g} {unit}{after} is outside the plausible range "
                        f"[{low:g}, {high:g}] {feature.unit}",
                    )
                    tally.out_of_range += 1
                    continue
                if feature.integer and not float(converted).is_integer():
                    problem(column, shown, "must be a whole number")
                    tally.invalid += 1
                    continue
                if factor is not None:
                    tally.converted += 1
                record[name] = converted
            elif feature.type is FeatureType.YES_NO:
                text = code_text(raw)
                if codes and text.lower() in codes:
                    tally.recoded += 1
                text = (codes or {}).get(text.lower(), text).lower()
                if text in YES_CODES:
                    record[name] = 1.0
                elif text in NO_CODES:
                    record[name] = 0.0
                else:
                    problem(
                        column,
                        raw,
                        f'unknown yes/no code; map it under data.codes.{name} (e.g. M = "yes")',
                    )
                    tally.invalid += 1
                    continue
            else:
                text = code_text(raw)
                if codes and text.lower() in codes:
                    tally.recoded += 1
                text = (codes or {}).get(text.lower(), text)
                levels = {c.lower(): c for c in feature.categories}
                if text.lower() not in levels:
                    problem(
                        column,
                        raw,
                        f"unknown category; {name} is one of "
                        f"{', '.join(feature.categories)} (map codes under data.codes.{name})",
                    )
                    tally.invalid += 1
                    continue
                record[name] = levels[text.lower()]
        label_column = mapping.column_of(label.column)
        label_raw = row.get(label_column)
        label_value = 0.0
        label_tally = tallies[label.column]
        if is_missing(label_raw):
            problem(label_column, label_raw, "missing label")
            label_tally.missing += 1
        else:
            text = code_text(label_raw)
            label_codes = lowered_codes.get(label.column, {})
            if text.lower() in label_codes:
                label_tally.recoded += 1
            text = code_text(label_codes.get(text.lower(), text)).lower()
            if text in positive:
                label_value = 1.0
            elif text not in negative:
                problem(label_column, label_raw, "neither a positive nor a negative label value")
                label_tally.invalid += 1
        if split_column is not None and not group:
            problem(split_column, None, "missing institution")
        if problems:
            quarantined.extend(
                QuarantinedRow(
                    source,
                    index,
                    where,
                    column,
                    "" if is_missing(raw) else str(raw)[:200],
                    reason,
                    pseudonym,
                )
                for column, raw, reason in problems
            )
            continue
        for feature in task.features:
            observed = record.get(feature.name)
            if observed is not None:
                tallies[feature.name].observed.append(observed)
            elif feature.missing is MissingRule.FILL:
                tallies[feature.name].filled += 1
        task.fill_missing(record)
        values.append(record)
        labels.append(label_value)
        row_numbers.append(index)
        groups.append(group)
        pseudonyms.append(pseudonym)
    conversions = {
        name: f"{mapping.units[name]} -> {task.feature(name).unit} (x {factor:.6g})"
        for name, factor in factors.items()
    }
    for (name, unit), factor in sorted(measured_factors.items()):
        target = task.feature(name).unit
        if unit and unit != target:
            seen = f"{unit} -> {target} (x {factor:.6g})"
            conversions[name] = f"{conversions[name]}; {seen}" if name in conversions else seen
    return MappedRows(
        values,
        labels,
        row_numbers,
        groups,
        pseudonyms,
        quarantined,
        len(frame),
        conversions,
        tallies,
    )


def parse_mapping(raw: Mapping[str, Any], *, where: str) -> DataMapping:
    """Validate a mapping table; MappingError names ``where`` and the key."""
    from pydantic import ValidationError

    from countyfl.clinical.task import location

    try:
        return DataMapping.model_validate(dict(raw))
    except ValidationError as error:
        problems = "\n".join(
            f"{where}: data.{location(tuple(issue['loc']))}: {issue['msg']}"
            for issue in error.errors()
        )
        raise MappingError(f"{problems}\nFix the mapping in {where}.") from None


def require_columns(frame: pd.DataFrame, columns: Sequence[str], *, where: str) -> None:
    """SchemaError when ``frame`` lacks one of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{where}: the export has no columns {missing}")


def check_units(task: TaskDefinition, *, where: str) -> None:
    """MappingError when a number feature's unit is not one pint knows (naming the key)."""
    problems = []
    for index, feature in enumerate(task.features):
        if feature.unit is None:
            continue
        try:
            unit_factor(feature.unit, feature.unit)
        except ValueError as error:
            problems.append(
                f"{where}: features[{index}] ({feature.name!r}).unit = {feature.unit!r}: "
                f"{error}; write it in pint's syntax (e.g. 'mg/dL', 'mmol/L', 'mmHg', '1/min')"
            )
    if problems:
        raise MappingError("\n".join(problems))
