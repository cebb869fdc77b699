"""A site's mapping: renames, units (pint), codes, number formats, dates, quarantine."""

from __future__ import annotations

import pytest

from countyfl.clinical.mapping import (
    MappingError,
    check_mapping,
    map_rows,
    parse_number,
    unit_factor,
)
from tests.clinical.support import COLUMNS, frame, mapping, task


def _mapped():  # type: ignore[no-untyped-def]
    checked = check_mapping(task(), mapping(), COLUMNS, where="site.toml")
    return map_rows(frame().drop(columns=["name", "phone"]), checked, source="hf.csv")


def test_units_convert_with_the_molar_mass() -> None:
    # creatinine 113.12 g/mol: 88.4 umol/L = 1.0 mg/dL (the clinical rule of thumb)
    assert unit_factor("umol/L", "mg/dL", molar_mass=113.12) * 88.4 == pytest.approx(1.0, 1e-3)
    assert unit_factor("1e9/L", "1e3/uL") == pytest.approx(1.0)
    assert unit_factor("mmol/L", "mg/dL", molar_mass=180.156) == pytest.approx(18.0156)
    with pytest.raises(ValueError, match="cannot be converted"):
        unit_factor("umol/L", "mg/dL")  # no molar mass: impossible


def test_rows_are_mapped_into_the_tasks_units_and_codes() -> None:
    rows = _mapped()
    assert rows.row_numbers == [1, 2, 3]
    first, second, third = rows.values
    assert first["age"] == 75.0  # born 12.03.1950, admitted 01.06.2025
    assert second["age"] == 62.0  # birthday (30.11) not yet reached on 15.07
    assert first["creatinine"] == pytest.approx(1.0, 1e-3)
    assert second["creatinine"] == pytest.approx(1060.8 / 88.4, 1e-3)  # 1.060,8 umol/L
    assert third["creatinine"] == 1.0  # missing: the task's fill value
    assert [r["sex-male"] for r in rows.values] == [1.0, 0.0, 1.0]
    assert [r["smoking"] for r in rows.values] == ["never", "former", "current"]
    assert rows.labels == [1.0, 0.0, 0.0]
    assert "umol/L -> mg/dL" in rows.conversions["creatinine"]


def test_bad_rows_are_quarantined_with_original_value_unit_and_reason() -> None:
    by_row = {q.row_number: q for q in _mapped().quarantined}
    assert set(by_row) == {4, 5, 6}
    assert by_row[4].field == "kreatinin"
    assert by_row[4].value == "2000 umol/L"
    assert "after conversion from umol/L" in by_row[4].reason
    assert "outside the plausible range [0.1, 15] mg/dL" in by_row[4].reason
    assert (by_row[5].field, by_row[5].value) == ("geschlecht", "X")
    assert "unknown yes/no code" in by_row[5].reason
    assert (by_row[6].field, by_row[6].value) == ("verstorben", "vielleicht")


def test_numbers_as_written() -> None:
    german = mapping()
    assert parse_number("1.234,5", german) == 1234.5
    english = mapping(decimal=".", thousands=",")
    assert parse_number("1,234.5", english) == 1234.5
    with pytest.raises(ValueError):
        parse_number("12 mg", english)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"columns": {**mapping().columns, "creatinine": "krea"}},
            "site.toml: data.columns.sex-male",
        ),
        ({"units": {"creatinine": "mmHg"}}, "site.toml: data.units.creatinine = 'mmHg'"),
        ({"codes": {"smoking": {"nie": "sometimes"}}}, "data.codes.smoking.'nie' = 'sometimes'"),
        ({"columns": {"sex-male": "geschlecht", "death": "nope"}}, "data.columns.death = 'nope'"),
        ({"columns": {"sex": "geschlecht"}}, "data.columns.sex: heart-failure-1y has no"),
    ],
)
def test_bad_mappings_fail_before_any_row_naming_the_file_and_key(
    change: dict[str, object], message: str
) -> None:
    columns = [c for c in COLUMNS if c != "geschlecht"] if "krea" in str(change) else COLUMNS
    with pytest.raises(MappingError) as error:
        check_mapping(task(), mapping(**change), columns, where="site.toml")
    assert message in str(error.value)


def test_an_identifier_may_not_be_a_feature() -> None:
    with pytest.raises(MappingError, match="is an identifier"):
        check_mapping(
            task(),
            mapping(identifiers=["kreatinin"]),
            COLUMNS,
            where="site.toml",
        )
