"""Row validation against the common schema and the quarantine file (property tests)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, get_args

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel

from countyfl.data.framingham import MISSING_VALUE_RULES, MissingValueRule
from countyfl.data.quarantine import (
    QUARANTINE_COLUMNS,
    QuarantinedRow,
    validate_rows,
    write_quarantine,
)
from countyfl.data.schema import (
    ChestPain,
    FraminghamRecord,
    HeartDiseaseHospital,
    HeartDiseaseRecord,
    RestingEcg,
)
from countyfl.errors import CountyflError, SchemaError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MISSING_REASON = "missing value (test)"


def _finite(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def _zero_one() -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1])


# Column (the export's name, i.e. the schema alias) -> strategy for a valid value.
HEART_VALID: dict[str, st.SearchStrategy[Any]] = {
    "age": st.integers(18, 100),
    "sex": st.sampled_from(["Male", "Female"]),
    "dataset": st.sampled_from(get_args(HeartDiseaseHospital)),
    "cp": st.sampled_from(get_args(ChestPain)),
    "trestbps": _finite(0, 250),
    "chol": _finite(0, 700),
    "fbs": st.booleans(),
    "restecg": st.sampled_from(get_args(RestingEcg)),
    "thalch": _finite(50, 230),
    "exang": st.booleans(),
    "oldpeak": _finite(-3.0, 7.0),
    "num": st.integers(0, 4),
}
# Column -> values the schema must refuse there.
HEART_INVALID: dict[str, list[Any]] = {
    "age": [17, 101, 300, "old", 45.5],
    "sex": ["M", "unknown"],
    "dataset": ["Mayo Clinic"],
    "cp": ["banana"],
    "trestbps": [-1.0, 251.0, "high"],
    "chol": [-5.0, 701.0],
    "fbs": ["maybe", 2],
    "restecg": ["abnormal"],
    "thalch": [49.0, 231.0],
    "exang": ["sometimes"],
    "oldpeak": [-3.5, 7.5],
    "num": [-1, 5, 2.5],
}

FRAMINGHAM_VALID: dict[str, st.SearchStrategy[Any]] = {
    "male": _zero_one(),
    "age": st.integers(18, 100),
    "education": st.none() | st.integers(1, 4),
    "currentSmoker": _zero_one(),
    "cigsPerDay": st.none() | _finite(0, 100),
    "BPMeds": st.none() | _zero_one(),
    "prevalentStroke": _zero_one(),
    "prevalentHyp": _zero_one(),
    "diabetes": _zero_one(),
    "totChol": st.none() | _finite(80, 700),
    "sysBP": _finite(70, 300),
    "diaBP": _finite(30, 160),
    "BMI": st.none() | _finite(10, 70),
    "heartRate": st.none() | _finite(30, 220),
    "glucose": st.none() | _finite(30, 500),
    "TenYearCHD": _zero_one(),
}
FRAMINGHAM_INVALID: dict[str, list[Any]] = {
    "male": [2, -1],
    "age": [10, 130],
    "education": [0, 7],
    "currentSmoker": [2],
    "cigsPerDay": [-1.0, 101.0],
    "BPMeds": [3],
    "prevalentStroke": ["yes", 2],
    "prevalentHyp": [2],
    "diabetes": [-1],
    "totChol": [50.0, 900.0],
    "sysBP": [400.0, 50.0],
    "diaBP": [20.0, 200.0],
    "BMI": [5.0, 90.0],
    "heartRate": [10.0, 300.0],
    "glucose": [600.0, 10.0],
    "TenYearCHD": [2, "yes"],
}


def _alias(model: type[BaseModel], field: str) -> str:
    return model.model_fields[field].alias or field


# Framingham columns whose rule is to quarantine the row when the value is missing
# (the loader's complete-case list).
FRAMINGHAM_QUARANTINE_COLUMNS = [
    _alias(FraminghamRecord, name)
    for name, rule in MISSING_VALUE_RULES.items()
    if rule is MissingValueRule.QUARANTINE
]
FRAMINGHAM_FILLED_COLUMNS = [
    _alias(FraminghamRecord, name)
    for name, rule in MISSING_VALUE_RULES.items()
    if rule is not MissingValueRule.QUARANTINE
]


def rows_of(valid: dict[str, st.SearchStrategy[Any]], min_size: int = 1) -> st.SearchStrategy:
    return st.lists(st.fixed_dictionaries(valid), min_size=min_size, max_size=25)


def test_value_tables_cover_every_schema_column() -> None:
    """The generators above must track the schema, or the properties below test less."""
    for model, valid, invalid in (
        (HeartDiseaseRecord, HEART_VALID, HEART_INVALID),
        (FraminghamRecord, FRAMINGHAM_VALID, FRAMINGHAM_INVALID),
    ):
        columns = {_alias(model, name) for name in model.model_fields}
        assert set(valid) == columns
        assert set(invalid) == columns


@SETTINGS
@given(rows=rows_of(HEART_VALID))
def test_valid_heart_rows_all_pass(rows: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(rows)
    outcome = validate_rows(
        frame,
        HeartDiseaseRecord,
        source="heart.csv",
        required=list(HEART_VALID),
        institution_column="dataset",
    )
    assert outcome.quarantined == []
    assert outcome.row_numbers == list(range(1, len(rows) + 1))
    for record, row in zip(outcome.records, rows, strict=True):
        assert record.age == row["age"]
        assert record.hospital == row["dataset"]
        assert record.chest_pain == row["cp"]
        assert record.cholesterol == pytest.approx(row["chol"])
        assert record.exercise_angina is row["exang"]
        assert record.diagnosis == row["num"]


@SETTINGS
@given(rows=rows_of(FRAMINGHAM_VALID))
def test_valid_framingham_rows_all_pass(rows: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(rows)
    outcome = validate_rows(
        frame,
        FraminghamRecord,
        source="framingham.csv",
        required=FRAMINGHAM_QUARANTINE_COLUMNS,
    )
    assert outcome.quarantined == []
    assert outcome.row_numbers == list(range(1, len(rows) + 1))
    for record, row in zip(outcome.records, rows, strict=True):
        assert record.age == row["age"]
        assert record.current_smoker == row["currentSmoker"]
        assert (record.glucose is None) == (row["glucose"] is None)
        assert (record.bp_medication is None) == (row["BPMeds"] is None)


def _inject(
    data: st.DataObject, rows: list[dict[str, Any]], columns: list[str], value: Any | None
) -> tuple[int, str, Any]:
    """Put ``value`` (or, when None, a drawn invalid value) in one drawn row and column."""
    index = data.draw(st.integers(0, len(rows) - 1), label="row index")
    column = data.draw(st.sampled_from(columns), label="column")
    rows[index][column] = value
    return index, column, value


def _check_one_row_quarantined(
    outcome: Any, rows_in: int, index: int, column: str, source: str
) -> QuarantinedRow:
    assert len(outcome.quarantined) == 1, outcome.quarantined
    entry = outcome.quarantined[0]
    assert entry.row_number == index + 1
    assert entry.field == column
    assert entry.source == source
    assert entry.reason
    assert outcome.quarantined_row_count == 1
    assert len(outcome.records) + outcome.quarantined_row_count == rows_in
    assert entry.row_number not in outcome.row_numbers
    assert outcome.row_numbers == [n for n in range(1, rows_in + 1) if n != index + 1]
    return entry


@SETTINGS
@given(rows=rows_of(HEART_VALID), data=st.data())
def test_one_invalid_heart_value_quarantines_exactly_that_row(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    column = data.draw(st.sampled_from(sorted(HEART_INVALID)), label="column")
    bad = data.draw(st.sampled_from(HEART_INVALID[column]), label="bad value")
    index = data.draw(st.integers(0, len(rows) - 1), label="row index")
    rows[index][column] = bad
    outcome = validate_rows(
        pd.DataFrame(rows),
        HeartDiseaseRecord,
        source="heart.csv",
        required=list(HEART_VALID),
        missing_reason=MISSING_REASON,
        institution_column="dataset",
    )
    entry = _check_one_row_quarantined(outcome, len(rows), index, column, "heart.csv")
    assert entry.reason != MISSING_REASON
    assert entry.institution == str(rows[index]["dataset"])
    assert entry.value != ""


@SETTINGS
@given(rows=rows_of(FRAMINGHAM_VALID), data=st.data())
def test_one_invalid_framingham_value_quarantines_exactly_that_row(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    column = data.draw(st.sampled_from(sorted(FRAMINGHAM_INVALID)), label="column")
    bad = data.draw(st.sampled_from(FRAMINGHAM_INVALID[column]), label="bad value")
    index = data.draw(st.integers(0, len(rows) - 1), label="row index")
    rows[index][column] = bad
    outcome = validate_rows(
        pd.DataFrame(rows),
        FraminghamRecord,
        source="framingham.csv",
        required=FRAMINGHAM_QUARANTINE_COLUMNS,
        missing_reason=MISSING_REASON,
    )
    entry = _check_one_row_quarantined(outcome, len(rows), index, column, "framingham.csv")
    assert entry.reason != MISSING_REASON
    assert entry.institution == ""


@SETTINGS
@given(rows=rows_of(HEART_VALID), data=st.data(), declare_required=st.booleans())
def test_one_missing_heart_value_quarantines_exactly_that_row(
    rows: list[dict[str, Any]], data: st.DataObject, declare_required: bool
) -> None:
    index, column, _ = _inject(data, rows, list(HEART_VALID), None)
    outcome = validate_rows(
        pd.DataFrame(rows),
        HeartDiseaseRecord,
        source="heart.csv",
        required=list(HEART_VALID) if declare_required else None,
        missing_reason=MISSING_REASON,
    )
    entry = _check_one_row_quarantined(outcome, len(rows), index, column, "heart.csv")
    assert entry.value == ""
    # A declared complete-case column gets the loader's reason; otherwise the schema's.
    assert (entry.reason == MISSING_REASON) is declare_required


@SETTINGS
@given(rows=rows_of(FRAMINGHAM_VALID), data=st.data())
def test_missing_framingham_value_follows_its_rule(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    index, column, _ = _inject(data, rows, list(FRAMINGHAM_VALID), None)
    outcome = validate_rows(
        pd.DataFrame(rows),
        FraminghamRecord,
        source="framingham.csv",
        required=FRAMINGHAM_QUARANTINE_COLUMNS,
        missing_reason=MISSING_REASON,
    )
    if column in FRAMINGHAM_QUARANTINE_COLUMNS:
        entry = _check_one_row_quarantined(outcome, len(rows), index, column, "framingham.csv")
        assert entry.reason == MISSING_REASON
    else:
        assert column in FRAMINGHAM_FILLED_COLUMNS
        assert outcome.quarantined == []
        assert len(outcome.records) == len(rows)
        field = next(
            name
            for name in FraminghamRecord.model_fields
            if _alias(FraminghamRecord, name) == column
        )
        assert getattr(outcome.records[index], field) is None


@SETTINGS
@given(rows=rows_of(HEART_VALID, min_size=2), data=st.data())
def test_several_bad_rows_are_each_quarantined_and_counted(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    bad_indices = data.draw(
        st.sets(st.integers(0, len(rows) - 1), min_size=1, max_size=len(rows)), label="bad rows"
    )
    for index in bad_indices:
        rows[index]["age"] = 300
    outcome = validate_rows(pd.DataFrame(rows), HeartDiseaseRecord, source="heart.csv")
    assert {q.row_number for q in outcome.quarantined} == {i + 1 for i in bad_indices}
    assert {q.field for q in outcome.quarantined} == {"age"}
    assert len(outcome.records) + outcome.quarantined_row_count == len(rows)


def test_a_row_with_two_problems_gives_two_entries_but_counts_once() -> None:
    rows = [
        {
            "male": 1,
            "age": 40,
            "education": 2,
            "currentSmoker": 0,
            "cigsPerDay": 0.0,
            "BPMeds": 0,
            "prevalentStroke": 0,
            "prevalentHyp": 0,
            "diabetes": 0,
            "totChol": 200.0,
            "sysBP": 120.0,
            "diaBP": 80.0,
            "BMI": 25.0,
            "heartRate": 70.0,
            "glucose": 80.0,
            "TenYearCHD": 0,
        },
    ]
    rows.append({**rows[0], "age": 5, "sysBP": 999.0})
    outcome = validate_rows(pd.DataFrame(rows), FraminghamRecord, source="f.csv")
    assert sorted(q.field for q in outcome.quarantined) == ["age", "sysBP"]
    assert {q.row_number for q in outcome.quarantined} == {2}
    assert outcome.quarantined_row_count == 1
    assert outcome.row_numbers == [1]


@SETTINGS
@given(rows=rows_of(HEART_VALID), data=st.data())
def test_missing_required_column_raises_schema_error_naming_it(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    column = data.draw(st.sampled_from(sorted(HEART_VALID)), label="dropped column")
    frame = pd.DataFrame(rows).drop(columns=[column])
    with pytest.raises(SchemaError, match=f"'{column}'") as raised:
        validate_rows(frame, HeartDiseaseRecord, source="heart.csv")
    assert isinstance(raised.value, CountyflError)
    assert "heart.csv" in str(raised.value)


@SETTINGS
@given(rows=rows_of(FRAMINGHAM_VALID))
def test_optional_column_with_a_default_may_be_absent(rows: list[dict[str, Any]]) -> None:
    # education has a default (not a model feature): a file without it is still usable.
    frame = pd.DataFrame(rows).drop(columns=["education"])
    outcome = validate_rows(frame, FraminghamRecord, source="framingham.csv")
    assert outcome.quarantined == []
    assert all(record.education is None for record in outcome.records)


def test_empty_frame_with_the_right_columns_is_empty_outcome() -> None:
    frame = pd.DataFrame(columns=list(HEART_VALID))
    outcome = validate_rows(frame, HeartDiseaseRecord, source="heart.csv")
    assert outcome.records == []
    assert outcome.quarantined == []
    assert outcome.quarantined_row_count == 0


# ---------------------------------------------------------------- write_quarantine

_csv_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
)
_entries = st.lists(
    st.builds(
        QuarantinedRow,
        source=_csv_text,
        row_number=st.integers(1, 10**6),
        institution=_csv_text,
        field=_csv_text,
        value=_csv_text,
        reason=_csv_text,
    ),
    max_size=20,
)


def _read_back(path: Path) -> list[QuarantinedRow]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == QUARANTINE_COLUMNS
        return [QuarantinedRow(**{**row, "row_number": int(row["row_number"])}) for row in reader]


@SETTINGS
@given(entries=_entries)
def test_write_quarantine_reads_back_the_same_entries(
    tmp_path_factory: pytest.TempPathFactory, entries: list[QuarantinedRow]
) -> None:
    path = tmp_path_factory.mktemp("quarantine") / "nested" / "quarantine.csv"
    assert write_quarantine(path, entries) == len(entries)
    assert _read_back(path) == entries


def test_write_quarantine_overwrites_and_accepts_a_generator(tmp_path: Path) -> None:
    path = tmp_path / "quarantine.csv"
    first = [QuarantinedRow("a.csv", 1, "x", "age", "300", "too old")]
    second = [QuarantinedRow("b.csv", n, "", "cp", "banana", 'bad, "quoted"') for n in (2, 3)]
    write_quarantine(path, first)
    assert write_quarantine(path, (row for row in second)) == 2
    assert _read_back(path) == second


def test_write_quarantine_of_real_outcome_round_trips(tmp_path: Path) -> None:
    rows = [
        {
            "age": 50,
            "sex": "Male",
            "dataset": "Hungary",
            "cp": "banana",
            "trestbps": 120.0,
            "chol": 200.0,
            "fbs": False,
            "restecg": "normal",
            "thalch": 150.0,
            "exang": False,
            "oldpeak": 1.0,
            "num": 0,
        },
    ]
    outcome = validate_rows(
        pd.DataFrame(rows), HeartDiseaseRecord, source="h.csv", institution_column="dataset"
    )
    path = tmp_path / "q.csv"
    write_quarantine(path, outcome.quarantined)
    back = _read_back(path)
    assert back == outcome.quarantined
    assert back[0].field == "cp"
    assert back[0].value == "banana"
    assert back[0].institution == "Hungary"
