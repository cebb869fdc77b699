"""A site.toml whose [data] maps its own export onto a county's task file."""

from __future__ import annotations

from pathlib import Path

import pytest

from countyfl.clinical.task import TEMPLATE
from countyfl.deployment.site import SiteConfigError, TaskData, load_site
from countyfl.deployment.site_data import load_site_data
from countyfl.errors import CountyflError
from tests.clinical.support import ROWS, write_csv

SITE = """\
institution_id = "township-3"
name = "Township 3 health centre"
level = "township"

[data]
task = "heart-failure.toml"
format = "csv"
path = "export.csv"
decimal = ","
thousands = "."
identifiers = ["patient_no"]
drop = ["name", "phone"]

[data.columns]
creatinine = "kreatinin"
sex-male = "geschlecht"
smoking = "rauchen"
death = "verstorben"

[data.units]
creatinine = "umol/L"

[data.codes.sex-male]
M = "yes"
F = "no"

[data.codes.smoking]
nie = "never"
ehem = "former"
aktuell = "current"

[data.codes.death]
ja = "1"
nein = "0"

[data.dates.age]
birth = "geburtsdatum"
at = "aufnahme"
format = "%d.%m.%Y"

[privacy]
budget_epsilon = 8.0
delta = 0.001
"""


def _site(tmp_path: Path, text: str = SITE) -> Path:
    (tmp_path / "heart-failure.toml").write_text(TEMPLATE)
    write_csv(tmp_path / "export.csv")
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_a_site_names_its_township_and_its_institution_carries_it(tmp_path: Path) -> None:
    plain = load_site_data(load_site(_site(tmp_path)))
    assert plain.institution.township == ""
    text = SITE.replace('level = "township"\n', 'level = "township"\ntownship = "township-3"\n')
    named = load_site_data(load_site(_site(tmp_path, text)))
    assert named.institution.township == "township-3"  # what its replies name (site.township)
    with pytest.raises(SiteConfigError, match="township"):
        load_site(_site(tmp_path, text.replace('township = "township-3"', 'township = "T 3!"')))


def test_a_site_maps_its_export_onto_the_task(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path))
    assert isinstance(site.data, TaskData)
    assert site.data.data_schema == "heart-failure-1y"
    data = load_site_data(site)
    assert data.rows_read == len(ROWS)
    assert data.rows_kept == 3
    assert data.feature_names == (
        "age",
        "creatinine",
        "sex-male",
        "smoking-former",
        "smoking-current",
    )
    assert data.quarantined_row_count == 3
    text = site.quarantine_path.read_text(encoding="utf-8")
    assert "2000 umol/L" in text
    assert "A-100" not in text and "Wang" not in text


def test_an_impossible_unit_names_the_site_file_and_key(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, SITE.replace('creatinine = "umol/L"', 'creatinine = "kg"')))
    with pytest.raises(CountyflError) as error:
        load_site_data(site)
    assert "site.toml: data.units.creatinine = 'kg': cannot convert" in str(error.value)


def test_a_mapping_to_a_missing_column_names_the_key(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, SITE.replace('"geschlecht"', '"sex"', 1)))
    with pytest.raises(CountyflError, match=r"data\.columns\.sex-male = 'sex'"):
        load_site_data(site)


def test_a_bad_task_file_stops_the_site_toml(tmp_path: Path) -> None:
    path = _site(tmp_path)
    (tmp_path / "heart-failure.toml").write_text(TEMPLATE.replace("[label]", "[labels]"))
    with pytest.raises(SiteConfigError) as error:
        load_site(path)
    assert "heart-failure.toml: label: required key is missing" in str(error.value)


def test_an_unknown_mapping_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match=r"site.toml: data\.unit: unknown field"):
        load_site(_site(tmp_path, SITE.replace("[data.units]", "[data.unit]")))


def test_the_documented_site_toml_is_valid(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "site-data.md").read_text()
    section = docs[docs.index("## A site's `[data]` mapping") :]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "heart-failure.toml").write_text(TEMPLATE)
    path = tmp_path / "site.toml"
    path.write_text(example)
    site = load_site(path, require_data=False)
    assert isinstance(site.data, TaskData)
    assert site.data.codes["sex-male"]["男"] == "yes"
    assert site.data.dates["age"].format == "%d.%m.%Y"


def test_node_check_shows_the_quarantine_and_the_conversions(tmp_path: Path) -> None:
    from countyfl.deployment.check import Status, check_site

    check = check_site(_site(tmp_path))
    found = {f.item: f for f in check.findings if f.section == "data"}
    assert found["rows read"].value == str(len(ROWS))
    assert found["rows kept"].value == "3"
    assert found["unit conversion: creatinine"].value.startswith("umol/L -> mg/dL")
    assert found["rows quarantined"].status is Status.WARNING
    assert not [f for f in check.findings if f.section == "data" and f.status is Status.PROBLEM]
