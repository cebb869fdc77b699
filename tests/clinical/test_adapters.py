"""CSV, Excel, SQLite and PostgreSQL exports give the same validated, pseudonymised rows."""

from __future__ import annotations

import csv
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from countyfl.clinical.adapters import ExportSource, read_export
from countyfl.clinical.mapping import MappedRows
from countyfl.clinical.pipeline import QUARANTINE_FILE, ingest
from countyfl.clinical.pseudonyms import SECRET_FILE
from countyfl.errors import DataError
from tests.clinical.support import ROWS, frame, mapping, task, write_csv

POSTGRES_URL = os.environ.get(
    "COUNTYFL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IDENTIFYING = [value for row in ROWS for value in row[:3]]  # patient_no, name, phone


def _ingest(source: ExportSource, state: Path) -> MappedRows:
    return ingest(
        task(), source, mapping(), state_dir=state, institution_id="site-a", where="site.toml"
    )


def _summary(rows: MappedRows) -> tuple[object, ...]:
    return (
        rows.values,
        rows.labels,
        rows.row_numbers,
        rows.pseudonyms,
        [(q.row_number, q.field, q.value, q.reason, q.pseudonym) for q in rows.quarantined],
    )


@pytest.fixture
def csv_rows(tmp_path: Path) -> MappedRows:
    path = write_csv(tmp_path / "export.csv")
    return _ingest(ExportSource(format="csv", path=path), tmp_path / "state")


def test_csv_rows_are_pseudonymised_and_quarantine_names_nobody(
    csv_rows: MappedRows, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert csv_rows.row_numbers == [1, 2, 3]
    assert all(p.startswith("p-") and len(p) == 18 for p in csv_rows.pseudonyms)
    assert len(set(csv_rows.pseudonyms)) == 3
    assert stat.S_IMODE((state / SECRET_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    with (state / QUARANTINE_FILE).open(encoding="utf-8") as handle:
        entries = list(csv.DictReader(handle))
    assert {e["row_number"] for e in entries} == {"4", "5", "6"}
    assert all(e["pseudonym"].startswith("p-") for e in entries)
    text = (state / QUARANTINE_FILE).read_text(encoding="utf-8")
    for value in IDENTIFYING:
        assert value not in text
    for row in csv_rows.values:
        assert not set(map(str, row.values())) & set(IDENTIFYING)


def test_the_same_secret_gives_the_same_pseudonyms(csv_rows: MappedRows, tmp_path: Path) -> None:
    again = _ingest(ExportSource(format="csv", path=tmp_path / "export.csv"), tmp_path / "state")
    assert again.pseudonyms == csv_rows.pseudonyms
    other = _ingest(ExportSource(format="csv", path=tmp_path / "export.csv"), tmp_path / "other")
    assert not set(other.pseudonyms) & set(csv_rows.pseudonyms)  # another site's secret


def test_direct_identifiers_are_dropped_as_the_export_is_read(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "export.csv")
    read = read_export(ExportSource(format="csv", path=path), drop=("name", "phone"))
    assert "name" not in read.columns and "phone" not in read.columns


def test_excel_gives_the_csv_rows(csv_rows: MappedRows, tmp_path: Path) -> None:
    path = tmp_path / "export.xlsx"
    frame().to_excel(path, index=False, sheet_name="patients", engine="openpyxl")
    rows = _ingest(ExportSource(format="excel", path=path, sheet="patients"), tmp_path / "state")
    assert _summary(rows) == _summary(csv_rows)


def test_sqlite_gives_the_csv_rows(csv_rows: MappedRows, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hospital.db'}"
    engine = create_engine(url)
    frame().to_sql("admissions", engine, index=False)
    engine.dispose()
    source = ExportSource(format="sql", url=url, query="SELECT * FROM admissions")
    assert _summary(_ingest(source, tmp_path / "state")) == _summary(csv_rows)


@pytest.fixture
def postgres_table() -> Iterator[str]:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except Exception as error:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is not reachable ({error})")
    table = f"admissions_{uuid.uuid4().hex[:8]}"
    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    frame().to_sql(table, engine, index=False)
    try:
        yield table
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f'DROP TABLE "{table}"')
        engine.dispose()


def test_postgresql_gives_the_csv_rows(
    csv_rows: MappedRows, tmp_path: Path, postgres_table: str
) -> None:
    source = ExportSource(
        format="sql", url=POSTGRES_URL, query=f'SELECT * FROM "{postgres_table}" ORDER BY 1'
    )
    assert _summary(_ingest(source, tmp_path / "state")) == _summary(csv_rows)


def test_a_failing_query_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(DataError, match="the query failed"):
        read_export(ExportSource(format="sql", url=url, query="SELECT * FROM nowhere"))
    source = ExportSource(format="sql", url="postgresql://u:hunter2@h/db", query="SELECT 1")
    assert "hunter2" not in source.describe()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"export\.csv: the export does not exist"):
        read_export(ExportSource(format="csv", path=tmp_path / "export.csv"))


def test_typed_excel_cells_are_not_reparsed_with_the_exports_separators(
    csv_rows: MappedRows, tmp_path: Path
) -> None:
    # A workbook whose numbers and dates are typed cells, not text: 1060.8 must stay
    # 1060.8 although the mapping says '.' separates thousands in text.
    import datetime as dt

    typed = frame()
    typed["kreatinin"] = [88.4, 1060.8, None, 2000, 70, 95]
    for column in ("geburtsdatum", "aufnahme"):
        typed[column] = [dt.datetime.strptime(v, "%d.%m.%Y") for v in typed[column]]
    path = tmp_path / "typed.xlsx"
    typed.to_excel(path, index=False, engine="openpyxl")
    rows = _ingest(ExportSource(format="excel", path=path), tmp_path / "state")
    assert rows.row_numbers == csv_rows.row_numbers
    assert [r["age"] for r in rows.values] == [r["age"] for r in csv_rows.values]
    assert [r["creatinine"] for r in rows.values] == pytest.approx(
        [r["creatinine"] for r in csv_rows.values]
    )
    (too_high,) = [q for q in rows.quarantined if q.row_number == 4]
    assert too_high.value == "2000 umol/L"


def test_sql_numeric_values_are_numbers_not_text() -> None:
    # PostgreSQL's NUMERIC arrives as Decimal: a number, not text with separators.
    from decimal import Decimal

    from countyfl.clinical.mapping import code_text, parse_number

    assert parse_number(Decimal("1060.8"), mapping()) == 1060.8
    assert parse_number("1.060,8", mapping()) == 1060.8
    assert code_text(Decimal("1")) == "1"
