"""FHIR R4 Bundles built from an export's rows by the tests (no data files in git)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
IDENTIFIER_SYSTEM = "urn:oid:2.16.840.1.113883.2.4.6.3"


@dataclass(frozen=True)
class Measurement:
    """An Observation to write: its code, value and unit (or a coded value)."""

    code: str
    value: float | str | None
    unit: str | None = None
    system: str = LOINC
    date: str | None = None
    status: str = "final"


def patient(
    index: int,
    *,
    identifier: str | None,
    gender: str | None,
    birth: str | None,
    deceased: bool | None = None,
) -> dict[str, Any]:
    """A Patient with the direct identifiers a hospital's system writes (to be dropped)."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": f"pat-{index}",
        "text": {"status": "generated", "div": f"<div>Patient Name {index}</div>"},
        "name": [{"family": f"Family{index}", "given": [f"Given{index}"]}],
        "telecom": [{"system": "phone", "value": f"+86 138 0000 {index:04d}"}],
        "address": [{"line": [f"{index} Hospital Road"], "city": "County Town"}],
    }
    if identifier is not None:
        resource["identifier"] = [{"system": IDENTIFIER_SYSTEM, "value": identifier}]
    if gender is not None:
        resource["gender"] = gender
    if birth is not None:
        resource["birthDate"] = birth
    if deceased is not None:
        resource["deceasedBoolean"] = deceased
    return resource


def observation(index: int, number: int, subject: str, measurement: Measurement) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs-{index}-{number}",
        "status": measurement.status,
        "code": {"coding": [{"system": measurement.system, "code": measurement.code}]},
        "subject": {"reference": subject},
        "performer": [{"display": "Dr Performer Name"}],
    }
    if measurement.date is not None:
        resource["effectiveDateTime"] = measurement.date
    value = measurement.value
    if isinstance(value, str):
        resource["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": value}]}
    elif value is not None:
        quantity: dict[str, Any] = {"value": value}
        if measurement.unit is not None:
            quantity |= {"unit": measurement.unit, "system": UCUM, "code": measurement.unit}
        resource["valueQuantity"] = quantity
    return resource


def condition(
    index: int, subject: str, code: str, system: str = SNOMED, verification: str = "confirmed"
) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"cond-{index}",
        "subject": {"reference": subject},
        "code": {"coding": [{"system": system, "code": code}]},
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": verification,
                }
            ]
        },
    }


@dataclass(frozen=True)
class PatientRecord:
    """One patient's resources: the Patient, its Observations and Conditions."""

    identifier: str | None
    gender: str | None
    birth: str | None
    measurements: Sequence[Measurement] = ()
    conditions: Sequence[tuple[str, str]] = ()
    """(system, code) of each Condition."""
    deceased: bool | None = None


def resources(records: Iterable[PatientRecord], *, urn: bool = False) -> list[dict[str, Any]]:
    """Bundle entries: each patient followed by its Observations and Conditions.

    ``urn``: refer to patients by ``urn:uuid:`` fullUrls (a transaction Bundle) instead
    of ``Patient/id``.
    """
    entries: list[dict[str, Any]] = []
    for index, record in enumerate(records, start=1):
        full_url = f"urn:uuid:00000000-0000-4000-8000-{index:012d}"
        subject = full_url if urn else f"Patient/pat-{index}"
        entries.append(
            {
                "fullUrl": full_url,
                "resource": patient(
                    index,
                    identifier=record.identifier,
                    gender=record.gender,
                    birth=record.birth,
                    deceased=record.deceased,
                ),
            }
        )
        for number, measurement in enumerate(record.measurements):
            entries.append({"resource": observation(index, number, subject, measurement)})
        for number, (system, code) in enumerate(record.conditions):
            entries.append(
                {"resource": condition(index * 100 + number, subject, code, system=system)}
            )
    return entries


def bundle(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


def write_bundle(path: Path, entries: Sequence[Mapping[str, Any]]) -> Path:
    path.write_text(json.dumps(bundle(entries)), encoding="utf-8")
    return path


def write_ndjson(path: Path, entries: Sequence[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e["resource"]) + "\n" for e in entries), encoding="utf-8")
    return path
