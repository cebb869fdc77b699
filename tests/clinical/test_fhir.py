"""FHIR R4 Bundles give the rows a CSV export of the same patients gives, through the same
mapping, pseudonyms and quarantine; invalid resources are quarantined, never a crash."""

from __future__ import annotations

import json
import random
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from countyfl.clinical import fhir
from countyfl.clinical.adapters import ExportSource, read_rows
from countyfl.clinical.fhir import FhirOptions, ucum_to_pint
from countyfl.clinical.mapping import DataMapping, MappedRows, parse_mapping, unit_factor
from countyfl.clinical.pipeline import QUARANTINE_FILE, ingest
from countyfl.clinical.task import TEMPLATE, TaskDefinition, parse_task
from countyfl.errors import DataError
from tests.clinical.fhir_support import (
    ICD10,
    IDENTIFIER_SYSTEM,
    LOINC,
    SNOMED,
    Measurement,
    PatientRecord,
    bundle,
    resources,
    write_bundle,
    write_ndjson,
)

CREATININE_UMOL = "14682-9"  # LOINC: creatinine, moles/volume, serum or plasma
CREATININE_MASS = "2160-0"  # LOINC: creatinine, mass/volume
SMOKING = "72166-2"  # LOINC: tobacco smoking status
SMOKING_CODES = {"266919005": "never", "8517006": "former", "77176002": "current"}
HEART_FAILURE = ((SNOMED, "84114007"), (ICD10, "I50.9"))

CSV_MAPPING = {
    "columns": {
        "creatinine": "kreatinin",
        "sex-male": "geschlecht",
        "smoking": "rauchen",
        "heart-failure": "hf",
    },
    "units": {"creatinine": "umol/L"},
    "codes": {"sex-male": {"M": "yes", "F": "no"}, "smoking": SMOKING_CODES},
    "dates": {"age": {"birth": "geburtsdatum", "at": "aufnahme"}},
    "identifiers": ["patient_no"],
    "drop": ["name", "phone"],
}
FHIR_MAPPING = {
    "columns": {"sex-male": "gender"},
    "codes": {
        "sex-male": {"male": "yes", "female": "no"},
        "smoking": SMOKING_CODES,
        "heart-failure": {"yes": "1", "no": "0"},
    },
    "dates": {"age": {"birth": "birthDate", "at": "observation_date"}},
    "identifiers": ["identifier"],
}
OPTIONS = FhirOptions(
    observations={
        "creatinine": (f"{LOINC}|{CREATININE_UMOL}", f"{LOINC}|{CREATININE_MASS}"),
        "smoking": (f"{LOINC}|{SMOKING}",),
    },
    conditions={"heart-failure": tuple(f"{s}|{c}" for s, c in HEART_FAILURE)},
    identifier_system=IDENTIFIER_SYSTEM,
)
DIRECT_IDENTIFIERS = ("Family", "Given", "+86 138", "Hospital Road", "Patient Name", "Performer")


def hf_task() -> TaskDefinition:
    text = TEMPLATE.replace('column = "death"', 'column = "heart-failure"')
    return parse_task(tomllib.loads(text), source=Path("heart-failure.toml"))


def export_rows(count: int = 30, seed: int = 7) -> pd.DataFrame:
    """A heart-failure export: creatinine in umol/L, some missing, two bad rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        birth = date(1930 + rng.randrange(60), rng.randrange(1, 13), rng.randrange(1, 29))
        admitted = date(2025, rng.randrange(1, 13), rng.randrange(1, 29))
        creatinine: float | None = round(rng.uniform(50, 400), 1)
        if i % 7 == 3:
            creatinine = None
        rows.append(
            {
                "patient_no": f"H-{i:04d}",
                "name": f"Patient Name {i}",
                "phone": f"+86 138 0000 {i:04d}",
                "geburtsdatum": birth.isoformat(),
                "aufnahme": admitted.isoformat(),
                "kreatinin": creatinine,
                "geschlecht": rng.choice("MF"),
                "rauchen": rng.choice(sorted(SMOKING_CODES)),
                "hf": rng.choice((0, 1)),
            }
        )
    frame = pd.DataFrame(rows)
    if count > 8:
        frame.loc[5, "kreatinin"] = 3000.0  # 33.9 mg/dL: outside the plausible range
        frame.loc[8, "geburtsdatum"] = "2015-06-01"  # age 9 or 10: outside [18, 110]
    return frame


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """The export as a hospital writes it: 3000, not 3000.0."""
    text = frame.assign(kreatinin=[f"{v:g}" if not pd.isna(v) else "" for v in frame["kreatinin"]])
    text.to_csv(path, index=False)
    return path


def records_of(frame: pd.DataFrame) -> list[PatientRecord]:
    """The same patients as FHIR resources (Condition codes alternate SNOMED / ICD-10)."""
    records = []
    for i, row in enumerate(frame.to_dict("records")):
        measurements = [Measurement(SMOKING, row["rauchen"], date=row["aufnahme"])]
        if not pd.isna(row["kreatinin"]):
            value = float(row["kreatinin"])
            measurements.insert(
                0,
                Measurement(
                    CREATININE_UMOL,
                    int(value) if value.is_integer() else value,
                    "umol/L",
                    date=f"{row['aufnahme']}T08:30:00+08:00",
                ),
            )
        records.append(
            PatientRecord(
                identifier=row["patient_no"],
                gender={"M": "male", "F": "female"}[row["geschlecht"]],
                birth=row["geburtsdatum"],
                measurements=measurements,
                conditions=[HEART_FAILURE[i % 2]] if row["hf"] == 1 else [],
            )
        )
    return records


def fhir_source(path: Path, options: FhirOptions = OPTIONS) -> ExportSource:
    return ExportSource(format="fhir", path=path, fhir=options)


def _ingest(
    source: ExportSource,
    mapping: dict[str, Any] | DataMapping,
    state: Path,
    task: TaskDefinition | None = None,
) -> MappedRows:
    parsed = mapping if isinstance(mapping, DataMapping) else parse_mapping(mapping, where="x")
    return ingest(
        task or hf_task(),
        source,
        parsed,
        state_dir=state,
        institution_id="site-a",
        where="site.toml",
    )


def _summary(rows: MappedRows) -> tuple[object, ...]:
    return (
        rows.values,
        rows.labels,
        rows.row_numbers,
        rows.pseudonyms,
        [(q.row_number, q.value, q.reason, q.pseudonym) for q in rows.quarantined],
    )


@pytest.fixture
def csv_rows(tmp_path: Path) -> MappedRows:
    path = write_csv(export_rows(), tmp_path / "export.csv")
    return _ingest(ExportSource(format="csv", path=path), CSV_MAPPING, tmp_path / "state")


@pytest.mark.parametrize("layout", ["bundle", "folder", "ndjson", "urn"])
def test_a_bundle_gives_the_csv_rows(csv_rows: MappedRows, tmp_path: Path, layout: str) -> None:
    entries = resources(records_of(export_rows()), urn=layout == "urn")
    if layout in ("bundle", "urn"):
        path = write_bundle(tmp_path / "export.json", entries)
    elif layout == "ndjson":
        path = write_ndjson(tmp_path / "export.ndjson", entries)
    else:  # three Bundles in a folder, split between patients
        path = tmp_path / "bundles"
        path.mkdir()
        starts = [i for i, e in enumerate(entries) if e["resource"]["resourceType"] == "Patient"]
        ends = [*starts[10::10], None]
        for part, (start, end) in enumerate(zip(starts[::10], ends, strict=True)):
            write_bundle(path / f"part-{part}.json", entries[start:end])
    rows = _ingest(fhir_source(path), FHIR_MAPPING, tmp_path / "state")
    assert len(csv_rows.values) == 28  # 30 less the two bad rows (missing creatinine: filled)
    assert _summary(rows) == _summary(csv_rows)
    assert {q.row_number for q in rows.quarantined} == {6, 9}
    assert "3000 umol/L" in {q.value for q in rows.quarantined}
    assert rows.conversions == {"creatinine": "umol/L -> mg/dL (x 0.011312)"}


def test_direct_identifiers_never_reach_the_rows_or_the_quarantine(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "export.json", resources(records_of(export_rows())))
    read = read_rows(fhir_source(path), drop=())
    assert list(read.frame.columns) == [
        "identifier",
        "gender",
        "birthDate",
        "deceased",
        "organization",
        "observation_date",
        "creatinine",
        "smoking",
        "heart-failure",
    ]
    text = read.frame.to_csv()
    for value in DIRECT_IDENTIFIERS:
        assert value not in text
    rows = _ingest(fhir_source(path), FHIR_MAPPING, tmp_path / "state")
    quarantine = (tmp_path / "state" / QUARANTINE_FILE).read_text(encoding="utf-8")
    for value in (*DIRECT_IDENTIFIERS, *export_rows()["patient_no"]):
        assert value not in quarantine
    assert all(p.startswith("p-") for p in rows.pseudonyms)
    dropped = read_rows(fhir_source(path), drop=("identifier",)).frame
    assert "identifier" not in dropped.columns


def test_ucum_units_convert_to_the_tasks_unit(tmp_path: Path) -> None:
    one_mg_dl = [
        (CREATININE_UMOL, 88.42, "umol/L"),
        (CREATININE_MASS, 1.0, "mg/dL"),
        (CREATININE_UMOL, 0.08842, "mmol/L"),
        (CREATININE_MASS, 10, "mg/L"),
        (CREATININE_MASS, 5, "kg"),
        (CREATININE_MASS, 1.0, None),
    ]
    records = [
        PatientRecord(
            f"U-{i}",
            "male",
            "1950-01-01",
            [Measurement(code, value, unit, date="2025-01-01"), Measurement(SMOKING, "8517006")],
        )
        for i, (code, value, unit) in enumerate(one_mg_dl)
    ]
    path = write_bundle(tmp_path / "units.json", resources(records))
    mapping = {**FHIR_MAPPING, "dates": {"age": {"birth": "birthDate", "at_date": "2025-06-01"}}}
    rows = _ingest(fhir_source(path), mapping, tmp_path / "state")
    assert [r["creatinine"] for r in rows.values] == pytest.approx([1.0] * 4, rel=1e-3)
    reasons = {q.row_number: q for q in rows.quarantined}
    assert set(reasons) == {5, 6}
    assert reasons[5].value == "5 kg"
    assert "kg: cannot convert to the task's unit mg/dL" in reasons[5].reason
    assert "no unit given (mg/dL expected)" in reasons[6].reason
    assert "umol/L -> mg/dL" in rows.conversions["creatinine"]
    assert "mmol/L -> mg/dL" in rows.conversions["creatinine"]
    assert rows.tallies["creatinine"].converted == 3  # umol/L, mmol/L, mg/L


@pytest.mark.parametrize(
    ("ucum", "pint_unit", "target", "factor"),
    [
        ("10*9/L", "1e9/L", "1e9/L", 1.0),
        ("10*3/uL", "1e3/uL", "1e9/L", 1.0),
        ("mm[Hg]", "mmHg", "kPa", 0.133322),
        ("kg/m2", "kg/m**2", "kg/m**2", 1.0),
        ("/min", "1/min", "1/s", 1 / 60),
        ("a", "year", "year", 1.0),
        ("%", "percent", "percent", 1.0),
        ("{cells}/uL", "1/uL", "1/L", 1e6),
        ("ug/(24.h)", "ug/(24*hour)", "ug/day", 1.0),
    ],
)
def test_ucum_units_are_read_by_pint(ucum: str, pint_unit: str, target: str, factor: float) -> None:
    assert ucum_to_pint(ucum) == pint_unit
    assert unit_factor(ucum_to_pint(ucum), target) == pytest.approx(factor, rel=1e-5)


def test_a_missing_observation_follows_the_features_missing_rule(tmp_path: Path) -> None:
    records = [
        PatientRecord("M-1", "female", "1950-01-01", [Measurement(SMOKING, "266919005")]),
        PatientRecord(
            "M-2",
            "male",
            "1950-01-01",
            [Measurement(CREATININE_MASS, 1.4, "mg/dL", date="2025-01-01")],
        ),
    ]
    path = write_bundle(tmp_path / "missing.json", resources(records))
    mapping = {**FHIR_MAPPING, "dates": {"age": {"birth": "birthDate", "at_date": "2025-06-01"}}}
    rows = _ingest(fhir_source(path), mapping, tmp_path / "state")
    # creatinine's rule fills (1.0 mg/dL); smoking's quarantines the row.
    assert rows.values == [{"age": 75.0, "creatinine": 1.0, "sex-male": 0.0, "smoking": "never"}]
    (missing,) = rows.quarantined
    assert (missing.row_number, missing.field) == (2, "smoking")
    assert "missing value" in missing.reason


def test_the_latest_observation_per_patient_and_code_is_used(tmp_path: Path) -> None:
    measurements = [
        Measurement(CREATININE_MASS, 1.5, "mg/dL", date="2025-03-01"),
        Measurement(CREATININE_MASS, 2.5, "mg/dL", date="2024-03-01"),
        Measurement(CREATININE_MASS, 9.5, "mg/dL", date="2025-09-01", status="entered-in-error"),
        Measurement(SMOKING, "77176002", date="2025-01-01"),
    ]
    path = write_bundle(
        tmp_path / "latest.json",
        resources([PatientRecord("L-1", "male", "1950-04-01", measurements)]),
    )
    rows = _ingest(fhir_source(path), FHIR_MAPPING, tmp_path / "state")
    # age at the latest used observation (2025-03-01), not the one entered in error
    assert rows.values == [{"age": 74.0, "creatinine": 1.5, "sex-male": 1.0, "smoking": "current"}]


def test_a_refuted_condition_is_not_the_label(tmp_path: Path) -> None:
    entries = resources(
        [
            PatientRecord(
                f"C-{i}",
                "male",
                "1950-04-01",
                [Measurement(SMOKING, "77176002", date="2025-01-01")],
            )
            for i in range(2)
        ]
    )
    for number, verification in enumerate(("confirmed", "refuted"), start=1):
        entries.append(
            {
                "resource": fhir_support_condition(
                    number, f"Patient/pat-{number}", "84114007", verification
                )
            }
        )
    path = write_bundle(tmp_path / "conditions.json", entries)
    rows = _ingest(fhir_source(path), FHIR_MAPPING, tmp_path / "state")
    assert rows.labels == [1.0, 0.0]


def fhir_support_condition(index: int, subject: str, code: str, verification: str) -> Any:
    from tests.clinical.fhir_support import condition

    return condition(index, subject, code, verification=verification)


def test_deceased_patients_can_be_the_label(tmp_path: Path) -> None:
    records = [
        PatientRecord(
            f"D-{i}",
            "female",
            "1940-02-02",
            [Measurement(SMOKING, "266919005", date="2025-01-01")],
            deceased=dead,
        )
        for i, dead in enumerate((True, False, None))
    ]
    path = write_bundle(tmp_path / "deceased.json", resources(records))
    mapping = {
        **FHIR_MAPPING,
        "columns": {"sex-male": "gender", "death": "deceased"},
        "codes": {**FHIR_MAPPING["codes"], "death": {"true": "1", "false": "0"}},  # type: ignore[dict-item]
    }
    del mapping["codes"]["heart-failure"]  # type: ignore[attr-defined]
    task = parse_task(tomllib.loads(TEMPLATE), source=Path("t.toml"))
    rows = _ingest(
        fhir_source(path, FhirOptions(observations=OPTIONS.observations)),
        mapping,
        tmp_path / "s",
        task,
    )
    assert rows.labels == [1.0, 0.0]
    assert [(q.row_number, q.reason) for q in rows.quarantined] == [(3, "missing label")]


def test_invalid_resources_are_quarantined_with_their_entry(tmp_path: Path) -> None:
    entries = resources(records_of(export_rows(4)))
    entries[0]["resource"]["birthDate"] = "1960-13-45"  # entry[0]: the first Patient
    bad_value = next(
        i
        for i, e in enumerate(entries)
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["subject"]["reference"] == "Patient/pat-2"
    )
    entries[bad_value]["resource"]["valueQuantity"]["value"] = "abc"
    entries.append(
        {
            "resource": {
                **entries[bad_value]["resource"],
                "id": "orphan",
                "subject": {"reference": "Patient/nobody"},
            }
        }
    )
    entries.append("not an entry")  # type: ignore[arg-type]
    entries.append({"resource": {"no": "resourceType"}})
    path = write_bundle(tmp_path / "bad.json", entries)
    rows = _ingest(fhir_source(path), FHIR_MAPPING, tmp_path / "state")
    by_row: dict[int, list[str]] = {}
    for q in rows.quarantined:
        by_row.setdefault(q.row_number, []).append(q.reason)
    assert any("bad.json entry[0]: not a valid FHIR Patient (birthDate:" in r for r in by_row[1]), (
        by_row
    )
    assert any(
        f"bad.json entry[{bad_value}] (Observation obs-2-0): not a valid FHIR Observation "
        "(valueQuantity.value:" in r
        for r in by_row[2]
    ), by_row
    assert len(by_row[0]) == 3
    assert any("(Observation orphan): its subject is not a Patient" in r for r in by_row[0])
    assert any("not a FHIR resource" in r for r in by_row[0])
    assert 3 not in by_row and 4 not in by_row
    assert len(rows.values) == 2


def test_a_bad_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "broken.json": ("{", r"broken\.json: not JSON"),
        "patient.json": ('{"resourceType": "Patient"}', r"patient\.json: not a FHIR Bundle"),
        "lines.ndjson": ('{"resourceType": "Patient"}\nnot json\n', r"lines\.ndjson line 2"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            read_rows(fhir_source(tmp_path / name))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no \.json or \.ndjson files"):
        read_rows(fhir_source(empty))
    with pytest.raises(DataError, match="does not exist"):
        read_rows(fhir_source(tmp_path / "nowhere.json"))
    path = write_bundle(tmp_path / "big.json", resources(records_of(export_rows(5))))
    monkeypatch.setattr(fhir, "MAX_ENTRIES", 4)
    with pytest.raises(DataError, match="more than 4 entries"):
        read_rows(fhir_source(path))
    monkeypatch.setattr(fhir, "MAX_FILE_BYTES", 100)
    with pytest.raises(DataError, match=r"big\.json: \d+ bytes, more than the 100"):
        read_rows(fhir_source(path))


def test_fhir_options_are_checked() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a column the adapter fills itself"):
        FhirOptions(observations={"gender": ("123",)})
    with pytest.raises(ValidationError, match="give at least one code"):
        FhirOptions(conditions={"hf": ()})
    with pytest.raises(ValidationError, match=r'\[data.fhir\] is for format = "fhir"'):
        ExportSource(format="csv", path=Path("x.csv"), fhir=OPTIONS)
    assert json.dumps(bundle([]))  # an empty Bundle is a Bundle


def test_the_documented_fhir_site_toml_runs(tmp_path: Path) -> None:
    from countyfl.deployment.check import check_site

    docs = (Path(__file__).resolve().parents[2] / "docs" / "site-data.md").read_text()
    section = docs[docs.index("## A FHIR R4 export") :]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "site.toml").write_text(example, encoding="utf-8")
    task = TEMPLATE.replace('column = "death"', 'column = "heart-failure"')
    (tmp_path / "heart-failure-diagnosis.toml").write_text(task, encoding="utf-8")
    folder = tmp_path / "exports" / "fhir"
    folder.mkdir(parents=True)
    entries = resources(records_of(export_rows(40)))
    write_bundle(folder / "part-1.json", entries[: len(entries) // 2])
    write_ndjson(folder / "part-2.ndjson", entries[len(entries) // 2 :])
    orphan = {**entries[1]["resource"], "id": "orphan", "subject": {"reference": "Patient/x"}}
    write_ndjson(folder / "part-3.ndjson", [{"resource": orphan}])
    check = check_site(tmp_path / "site.toml")
    assert not check.problems, check.problems
    assert check.data is not None and check.data.rows_read == 40
    assert check.data.rows_kept == 38
    assert check.data.quarantined_row_count == 2  # the orphan is no row
    assert check.data.quality is not None and check.data.quality.rows_quarantined == 2
    found = {f.item for f in check.findings}
    assert any("part-3.ndjson line 1 (Observation orphan)" in item for item in found)


def test_units_in_the_mapping_of_a_fhir_export_are_refused(tmp_path: Path) -> None:
    from countyfl.clinical.mapping import MappingError

    path = write_bundle(tmp_path / "export.json", resources(records_of(export_rows(3))))
    mapping = {**FHIR_MAPPING, "units": {"creatinine": "umol/L"}}
    with pytest.raises(MappingError, match=r"site\.toml: data\.units\.creatinine: a FHIR"):
        _ingest(fhir_source(path), mapping, tmp_path / "state")


def test_one_fhir_export_divides_by_managing_organization(tmp_path: Path) -> None:
    from countyfl.clinical.pipeline import simulation_dataset
    from countyfl.clinical.task import Simulation

    entries = resources(records_of(export_rows(60)))
    patients = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient"]
    for index, resource in enumerate(patients):
        resource["managingOrganization"] = {"reference": f"Organization/org-{index % 3}"}
    path = write_bundle(tmp_path / "county.json", entries)
    task = hf_task().model_copy(update={"simulation": Simulation(split_column="organization")})
    dataset = simulation_dataset(
        task,
        fhir_source(path),
        parse_mapping(FHIR_MAPPING, where="export.toml"),
        partition_seed=42,
        where="export.toml",
    )
    assert [i.name for i in dataset.institutions] == [
        "Organization/org-0",
        "Organization/org-1",
        "Organization/org-2",
    ]
