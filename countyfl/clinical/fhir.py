"""FHIR R4 adapter: Bundles (or NDJSON) of Patients, Observations and Conditions as rows.

A site whose export is FHIR writes ``format = "fhir"`` and a ``[data.fhir]`` table; the
adapter turns the resources into the same one-row-per-patient frame the CSV and SQL
adapters give, so the mapping, the pseudonyms and the quarantine work unchanged:

============================  =====================================================
frame column                  from
============================  =====================================================
``identifier``                Patient.identifier (``identifier_system``'s, else the first)
``gender``                    Patient.gender (male, female, other, unknown)
``birthDate``                 Patient.birthDate (as written: ``1950-03-12``)
``deceased``                  Patient.deceased[x] (``true`` / ``false``)
``organization``              Patient.managingOrganization (its reference, else its display)
``observation_date``          the date of the patient's latest used Observation
one per ``observations`` key  the latest Observation with one of its codes: a
                              valueQuantity keeps its UCUM unit (converted by the
                              mapping to the task's unit), codes and text as written
one per ``conditions`` key    ``yes`` when the patient has a Condition with one of
                              its codes (not refuted, not entered in error), else ``no``
============================  =====================================================

Names, telecom, addresses, photos, contacts and narratives are never read: each
resource is cut down to the keys above before it is validated (``fhir.resources``,
R4B models, which read R4 Patients, Observations and Conditions). An invalid resource
quarantines its patient's row with the file, the entry index and the resource id (a
Patient's own id is not shown: it may be a record number); a resource that names no
patient of the export is quarantined on its own (row 0). Files are bounded
(:data:`MAX_FILE_BYTES`, :data:`MAX_ENTRIES`, :data:`MAX_FILES`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from countyfl.clinical.mapping import Measured
from countyfl.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

MAX_FILE_BYTES = 128 * 1024 * 1024
MAX_ENTRIES = 1_000_000
MAX_FILES = 10_000

FIXED_COLUMNS = (
    "identifier",
    "gender",
    "birthDate",
    "deceased",
    "organization",
    "observation_date",
)
PATIENT_KEYS = frozenset(
    {"resourceType", "id", "meta", "identifier", "gender", "birthDate", "active"}
    | {"deceasedBoolean", "deceasedDateTime", "managingOrganization"}
)
OBSERVATION_KEYS = frozenset(
    {"resourceType", "id", "meta", "status", "code", "subject", "issued", "dataAbsentReason"}
    | {"effectiveDateTime", "effectiveInstant", "effectivePeriod"}
    | {"valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger"}
)
CONDITION_KEYS = frozenset(
    {"resourceType", "id", "meta", "code", "subject", "clinicalStatus", "verificationStatus"}
)
SKIPPED_STATUS = frozenset({"entered-in-error", "cancelled"})
SKIPPED_VERIFICATION = frozenset({"refuted", "entered-in-error"})

CodeToken = Annotated[str, Field(min_length=1, max_length=300)]
ColumnName = Annotated[str, Field(min_length=1, max_length=200)]


class FhirOptions(BaseModel):
    """``[data.fhir]``: which Observation and Condition codes make which columns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    observations: dict[ColumnName, tuple[CodeToken, ...]] = Field(
        default_factory=dict, max_length=500
    )
    """A column -> the Observation codes (``code`` or ``system|code``, e.g. LOINC) it holds."""
    conditions: dict[ColumnName, tuple[CodeToken, ...]] = Field(
        default_factory=dict, max_length=500
    )
    """A column -> the Condition codes (SNOMED CT, ICD-10) that make it ``yes``."""
    identifier_system: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    """The Patient.identifier system whose value identifies the patient (default: the first)."""

    @model_validator(mode="after")
    def _distinct(self) -> FhirOptions:
        for name in (*self.observations, *self.conditions):
            if name in FIXED_COLUMNS:
                raise ValueError(f"{name!r} is a column the adapter fills itself; choose another")
        both = set(self.observations) & set(self.conditions)
        if both:
            raise ValueError(f"{sorted(both)} name both observations and conditions")
        for table in (self.observations, self.conditions):
            for name, codes in table.items():
                if not codes:
                    raise ValueError(f"{name}: give at least one code")
        return self


@dataclass
class FhirRows:
    """The frame, problems of its rows (1-based) and problems attached to no row."""

    frame: pd.DataFrame
    row_problems: dict[int, list[tuple[str, object, str]]] = field(default_factory=dict)
    unattached: list[tuple[str, str, str]] = field(default_factory=list)
    """(file, resource type, reason) of resources that name no patient of the export."""


# -- UCUM -> pint ---------------------------------------------------------------------

_UCUM_ATOMS = {
    "a": "year",
    "mo": "month",
    "wk": "week",
    "d": "day",
    "h": "hour",
    "mm[Hg]": "mmHg",
    "cm[H2O]": "cmH2O",
    "[in_i]": "inch",
    "[ft_i]": "foot",
    "[lb_av]": "lb",
    "[oz_av]": "oz",
    "%": "percent",
    "[iU]": "IU",
    "[IU]": "IU",
    "Cel": "degC",
    "[degF]": "degF",
}
_UCUM_TOKEN = re.compile(
    r"\s*(?:(?P<ten>10[*^](?P<power>[+-]?\d+))"
    r"|(?P<annotation>\{[^}]*\})"
    r"|(?P<atom>(?:[A-Za-z%']|\[[^\]]*\])+)(?P<exponent>[+-]?\d+)?"
    r"|(?P<number>\d+)"
    r"|(?P<op>[./()]))"
)


def ucum_to_pint(ucum: str) -> str:
    """A UCUM unit (``umol/L``, ``10*9/L``, ``mm[Hg]``, ``kg/m2``) in pint's syntax.

    Anything it cannot read is returned as written, so pint names the unit it does not know.
    """
    text = ucum.strip()
    out: list[str] = []
    position = 0
    previous_operand = False
    while position < len(text):
        match = _UCUM_TOKEN.match(text, position)
        if match is None or match.end() == position:
            return ucum
        position = match.end()
        if match["ten"]:
            out.append(f"1e{int(match['power'])}")
            previous_operand = True
        elif match["annotation"]:
            if not previous_operand:  # "{cells}/uL": the annotation stands for 1
                out.append("1")
                previous_operand = True
        elif match["atom"]:
            atom = _UCUM_ATOMS.get(match["atom"], match["atom"])
            out.append(atom + (f"**{int(match['exponent'])}" if match["exponent"] else ""))
            previous_operand = True
        elif match["number"]:
            out.append(match["number"])
            previous_operand = True
        else:
            op = match["op"]
            if op == "/" and not previous_operand:
                out.append("1")
            out.append("*" if op == "." else op)
            previous_operand = op == ")"
    return "".join(out)


# -- reading --------------------------------------------------------------------------


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".ndjson")
        )
        if not files:
            raise DataError(f"{path}: no .json or .ndjson files in the folder")
        if len(files) > MAX_FILES:
            raise DataError(f"{path}: {len(files)} files, more than the {MAX_FILES} read")
        return files
    if not path.is_file():
        raise DataError(f"{path}: the export does not exist; point data.path at the file")
    return [path]


def _resources(path: Path) -> list[tuple[str, object]]:
    """(where, resource) of one file: a Bundle's entries or an NDJSON file's lines."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a FHIR file may have; "
            "split the export into several files in one folder"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from None
    if path.suffix.lower() == ".ndjson":
        resources: list[tuple[str, object]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                resources.append((f"{path.name} line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {number}: not JSON ({error.msg})") from None
            if len(resources) > MAX_ENTRIES:
                break
        return resources
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: not JSON ({error.msg}, line {error.lineno} column {error.colno})"
        ) from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise DataError(f"{path}: not a FHIR Bundle (resourceType must be 'Bundle')")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise DataError(f"{path}: Bundle.entry is not a list")
    result: list[tuple[str, object]] = []
    for index, entry in enumerate(entries[: MAX_ENTRIES + 1]):
        where = f"{path.name} entry[{index}]"
        if not isinstance(entry, dict):
            result.append((where, None))
            continue
        resource = entry.get("resource")
        if isinstance(resource, dict) and isinstance(entry.get("fullUrl"), str):
            resource = {**resource, "_fullUrl": entry["fullUrl"]}
        result.append((where, resource))
    return result


def _codings(resource: dict[str, Any]) -> list[tuple[str, str]]:
    concept = resource.get("code")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    return [
        (str(c.get("system") or ""), c["code"])
        for c in codings
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    ]


def _matches(codings: list[tuple[str, str]], tokens: tuple[str, ...]) -> bool:
    for token in tokens:
        system, _, code = token.rpartition("|")
        if any(c == code and (not system or s == system) for s, c in codings):
            return True
    return False


def _column_of(resource: dict[str, Any], table: dict[str, tuple[str, ...]]) -> str | None:
    codings = _codings(resource)
    return next((name for name, tokens in table.items() if _matches(codings, tokens)), None)


def _reference_keys(resource: dict[str, Any]) -> list[str]:
    keys = []
    if isinstance(resource.get("id"), str):
        keys.append(f"Patient/{resource['id']}")
    if isinstance(resource.get("_fullUrl"), str):
        keys.append(resource["_fullUrl"])
    return keys


def _subject_key(resource: dict[str, Any]) -> str | None:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(reference, str):
        return None
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        return reference
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return f"Patient/{parts[-1]}"
    return reference


def _invalid(error: Exception) -> str:
    """A validation error's locations and messages, never the values (they may identify)."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return type(error).__name__
    issues = [
        f"{'.'.join(map(str, issue['loc'])) or 'resource'}: "
        f"{str(issue['msg']).removeprefix('Value error, ')[:120]}"
        for issue in error.errors()[:3]
    ]
    more = len(error.errors()) - len(issues)
    return "; ".join(issues) + (f"; and {more} more" if more > 0 else "")


def _when(observation: Any) -> datetime | None:
    value = (
        observation.effectiveDateTime
        or observation.effectiveInstant
        or (
            observation.effectivePeriod
            and (observation.effectivePeriod.end or observation.effectivePeriod.start)
        )
        or observation.issued
    )
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str) and re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", value):
        parts = [int(p) for p in value.split("-")] + [1, 1]
        return datetime(parts[0], parts[1], parts[2])
    return None


def _value(observation: Any) -> object:
    quantity = observation.valueQuantity
    if quantity is not None:
        if quantity.value is None:
            return None
        written = str(quantity.code or quantity.unit or "")
        unit = ucum_to_pint(written) if written else ""
        return Measured(float(quantity.value), unit, written)
    if observation.valueInteger is not None:
        return int(observation.valueInteger)
    if observation.valueBoolean is not None:
        return "true" if observation.valueBoolean else "false"
    if observation.valueString is not None:
        return str(observation.valueString)
    concept = observation.valueCodeableConcept
    if concept is not None:
        for coding in concept.coding or ():
            if coding.code:
                return str(coding.code)
        return str(concept.text) if concept.text else None
    return None


def _status_code(concept: Any) -> str:
    for coding in (concept.coding or ()) if concept is not None else ():
        if coding.code:
            return str(coding.code)
    return ""


def read_fhir(path: Path, options: FhirOptions, *, drop: tuple[str, ...] = ()) -> FhirRows:
    """One row per Patient of the Bundle (or folder of Bundles / NDJSON files) at ``path``.

    Raises DataError naming the file when it is not a FHIR Bundle or NDJSON, or too big.
    """
    import pandas as pd
    from fhir.resources.R4B.condition import Condition
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient
    from pydantic import ValidationError

    files = _files(path)
    rows: list[dict[str, object]] = []
    problems: dict[int, list[tuple[str, object, str]]] = {}
    unattached: list[tuple[str, str, str]] = []
    patients: dict[str, int] = {}  # reference -> 1-based row
    facts: list[tuple[str, dict[str, Any], str, str]] = []  # (where, resource, kind, column)

    entries = 0
    # One file in memory at a time; of it, only the patients' cells and the resources
    # with a mapped code (cut to the keys read) are kept.
    for where, resource in (item for file in files for item in _resources(file)):
        entries += 1
        if entries > MAX_ENTRIES:
            raise DataError(
                f"{path}: more than {MAX_ENTRIES} entries; split the export into several sites "
                "or a smaller extract"
            )
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            unattached.append((where, "entry", f"{where}: not a FHIR resource; not used"))
            continue
        kind = resource["resourceType"]
        if kind == "Patient":
            row = len(rows) + 1
            kept = _cut(resource, PATIENT_KEYS)
            cells: dict[str, object] = dict.fromkeys(FIXED_COLUMNS)
            try:
                patient = Patient.model_validate(kept)
            except (ValidationError, ValueError, TypeError) as error:
                problems.setdefault(row, []).append(
                    ("Patient", None, f"{where}: not a valid FHIR Patient ({_invalid(error)})")
                )
            else:
                cells["identifier"] = _identifier(patient, options.identifier_system)
                cells["gender"] = patient.gender
                birth = kept.get("birthDate")
                cells["birthDate"] = birth if isinstance(birth, str) else None
                if patient.deceasedBoolean is not None:
                    cells["deceased"] = "true" if patient.deceasedBoolean else "false"
                elif patient.deceasedDateTime is not None:
                    cells["deceased"] = "true"
                organization = patient.managingOrganization
                if organization is not None:
                    cells["organization"] = organization.reference or organization.display
            rows.append(cells)
            for key in _reference_keys(resource):
                if key in patients:
                    problems.setdefault(row, []).append(
                        ("Patient", None, f"{where}: the same Patient as an earlier entry")
                    )
                patients.setdefault(key, row)
        elif kind == "Observation":
            column = _column_of(resource, options.observations)
            if column is not None:
                facts.append((where, _cut(resource, OBSERVATION_KEYS), kind, column))
        elif kind == "Condition":
            column = _column_of(resource, options.conditions)
            if column is not None:
                facts.append((where, _cut(resource, CONDITION_KEYS), kind, column))

    latest: dict[tuple[int, str], tuple[datetime, int, object]] = {}
    conditions: set[tuple[int, str]] = set()
    for order, (where, resource, kind, column) in enumerate(facts):
        named = f"{where} ({kind} {str(resource.get('id', ''))[:64]})".replace(" )", ")")
        subject = _subject_key(resource)
        owner = patients.get(subject) if subject is not None else None
        if owner is None:
            unattached.append(
                (where, kind, f"{named}: its subject is not a Patient of the export; not used")
            )
            continue
        model = Observation if kind == "Observation" else Condition
        try:
            parsed: Any = model.model_validate(resource)
        except (ValidationError, ValueError, TypeError) as error:
            problems.setdefault(owner, []).append(
                (column, None, f"{named}: not a valid FHIR {kind} ({_invalid(error)})")
            )
            continue
        if kind == "Condition":
            if _status_code(parsed.verificationStatus) not in SKIPPED_VERIFICATION:
                conditions.add((owner, column))
            continue
        if str(parsed.status) in SKIPPED_STATUS:
            continue
        when = _when(parsed) or datetime.min
        current = latest.get((owner, column))
        if current is None or (when, order) >= current[:2]:
            latest[(owner, column)] = (when, order, _value(parsed))

    for (owner, column), (when, _, value) in latest.items():
        cells = rows[owner - 1]
        cells[column] = value
        if when != datetime.min:
            day = when.date().isoformat()
            previous = cells.get("observation_date")
            if not isinstance(previous, str) or day > previous:
                cells["observation_date"] = day
    for index, cells in enumerate(rows, start=1):
        for column in options.observations:
            cells.setdefault(column, None)
        for column in options.conditions:
            cells[column] = "yes" if (index, column) in conditions else "no"
    columns = [
        c for c in (*FIXED_COLUMNS, *options.observations, *options.conditions) if c not in drop
    ]
    frame = pd.DataFrame([[cells.get(c) for c in columns] for cells in rows], columns=columns)
    frame = frame.astype(object).where(frame.notna(), None)
    return FhirRows(frame, problems, unattached)


def _cut(resource: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    """The resource with only the keys the adapter reads: nothing else is ever looked at."""
    return {k: v for k, v in resource.items() if k in keys}


def _identifier(patient: Any, system: str | None) -> str | None:
    for identifier in patient.identifier or ():
        if identifier.value and (system is None or identifier.system == system):
            return str(identifier.value)
    return None
