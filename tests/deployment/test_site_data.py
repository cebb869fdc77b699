"""A site's own export, loaded through its site.toml, against the simulation's Fed-Heart-Disease."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from countyfl.data import fed_heart_disease
from countyfl.data.federated import FederatedDataset, InstitutionData
from countyfl.data.sources import HEART_DISEASE_FILE, packaged_path
from countyfl.deployment.site import load_site
from countyfl.deployment.site_data import export_hospital_csv, load_site_data
from countyfl.errors import ConfigError, DataError, SchemaError

MakeSite = Callable[..., Path]

# Every column renamed, as a hospital information system might name them.
RENAMED = {
    "age": "patient_age",
    "sex": "gender",
    "cp": "chest_pain_type",
    "trestbps": "bp_rest_mmhg",
    "chol": "cholesterol_mg_dl",
    "fbs": "fbs_over_120",
    "restecg": "ecg_rest",
    "thalch": "hr_max",
    "exang": "angina_on_exercise",
    "oldpeak": "st_depression_mm",
    "num": "diagnosis_code",
}
# The same mapping in site.toml terms: common-schema field -> the export's column.
COLUMNS = {
    "age": "patient_age",
    "sex": "gender",
    "chest_pain": "chest_pain_type",
    "resting_bp": "bp_rest_mmhg",
    "cholesterol": "cholesterol_mg_dl",
    "fasting_blood_sugar_high": "fbs_over_120",
    "resting_ecg": "ecg_rest",
    "max_heart_rate": "hr_max",
    "exercise_angina": "angina_on_exercise",
    "st_depression": "st_depression_mm",
    "diagnosis": "diagnosis_code",
}


def _institution(dataset: FederatedDataset, hospital: str) -> InstitutionData:
    return next(i for i in dataset.institutions if i.name == hospital)


def _assert_same_arrays(actual: InstitutionData, expected: InstitutionData) -> None:
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.dtype == e.dtype == np.float32, name
        np.testing.assert_array_equal(a, e, err_msg=name)


@pytest.mark.parametrize("hospital", fed_heart_disease.HOSPITALS)
def test_a_hospital_export_gives_fed_heart_disease_arrays(
    make_site: MakeSite, fed_heart: FederatedDataset, hospital: str
) -> None:
    site = load_site(make_site(hospital))
    data = load_site_data(site)
    expected = _institution(fed_heart, hospital)

    _assert_same_arrays(data.institution, expected)
    assert data.institution.institution_id == expected.institution_id
    assert data.feature_names == fed_heart.feature_names
    raw = pd.read_csv(packaged_path(HEART_DISEASE_FILE))
    assert data.rows_read == int((raw["dataset"] == hospital).sum())
    # The same patients are quarantined as in the simulation's loader, for the same reason.
    expected_quarantined = {
        q.row_number for q in fed_heart.quarantined if q.institution == hospital
    }
    assert data.quarantined_row_count == len(expected_quarantined)
    assert data.rows_kept + data.quarantined_row_count == data.rows_read
    assert set(data.quarantine_counts()) <= {fed_heart_disease.MISSING_REASON}


@pytest.mark.parametrize("hospital", ["Cleveland", "Hungary"])
def test_renamed_columns_are_mapped_by_site_toml(
    make_site: MakeSite, fed_heart: FederatedDataset, hospital: str
) -> None:
    site = load_site(make_site(hospital, rename=RENAMED, columns=COLUMNS))
    assert "cholesterol_mg_dl" in pd.read_csv(site.data.path).columns
    data = load_site_data(site)
    _assert_same_arrays(data.institution, _institution(fed_heart, hospital))
    # Quarantine entries name the export's own columns.
    assert {q.field for q in data.quarantined} <= set(RENAMED.values())


def test_renamed_export_without_mapping_names_the_unmapped_fields(make_site: MakeSite) -> None:
    site = load_site(make_site("Cleveland", rename={"chol": "cholesterol_mg_dl"}))
    with pytest.raises(SchemaError) as caught:
        load_site_data(site)
    message = str(caught.value)
    assert "data.columns.cholesterol = 'chol'" in message
    assert "cholesterol_mg_dl" in message  # the export's columns are listed
    assert "data.columns.age" not in message


def test_bad_rows_are_quarantined_with_reasons_and_counted(
    make_site: MakeSite, fed_heart: FederatedDataset
) -> None:
    site = load_site(make_site("Cleveland", rename=RENAMED, columns=COLUMNS))
    frame = pd.read_csv(site.data.path)
    # A column the site.toml does not map must never be read, not even into the quarantine.
    frame.insert(1, "patient_name", [f"Patient {i}" for i in range(len(frame))])
    frame["patient_age"] = frame["patient_age"].astype(object)
    frame.loc[4, "patient_age"] = 250  # out of the schema's range
    frame.loc[9, "gender"] = "unknown"  # not a level of the schema
    frame.loc[9, "hr_max"] = 20  # a second problem in the same row
    frame.loc[20, "cholesterol_mg_dl"] = np.nan  # missing: FLamby keeps complete cases
    frame.loc[30, "patient_age"] = "sixty"  # not a number
    frame.to_csv(site.data.path, index=False)

    data = load_site_data(site)

    assert data.rows_read == 304
    assert data.quarantined_row_count == 4
    assert data.rows_kept == 300
    assert {q.row_number for q in data.quarantined} == {5, 10, 21, 31}
    fields = {(q.row_number, q.field) for q in data.quarantined}
    assert fields == {
        (5, "patient_age"),
        (10, "gender"),
        (10, "hr_max"),
        (21, "cholesterol_mg_dl"),
        (31, "patient_age"),
    }
    counts = data.quarantine_counts()
    assert counts[fed_heart_disease.MISSING_REASON] == 1
    assert sum(counts.values()) == 5  # row 10 has two reasons
    assert all(q.institution == "cleveland" for q in data.quarantined)

    with site.quarantine_path.open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 5
    assert {int(row["row_number"]) for row in written} == {5, 10, 21, 31}
    assert all(row["source"] == "export.csv" for row in written)
    text = site.quarantine_path.read_text(encoding="utf-8")
    assert "Patient" not in text

    # What was kept is preprocessed exactly as a clean export of the same rows would be.
    clean = site.data.path.with_name("clean.csv")
    frame.drop(index=[4, 9, 20, 30]).drop(columns=["patient_name"]).to_csv(clean, index=False)
    clean_site = site.model_copy(update={"data": site.data.model_copy(update={"path": clean})})
    _assert_same_arrays(load_site_data(clean_site).institution, data.institution)


def test_the_quarantine_file_describes_the_current_export(make_site: MakeSite) -> None:
    site = load_site(make_site("Hungary"))
    assert load_site_data(site).quarantined_row_count > 0
    clean = pd.read_csv(site.data.path).dropna(subset=list(fed_heart_disease.REQUIRED_COLUMNS))
    clean.to_csv(site.data.path, index=False)
    assert load_site_data(site).quarantined_row_count == 0
    with site.quarantine_path.open(encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == []


def test_too_few_valid_rows_is_an_error_naming_the_export(make_site: MakeSite) -> None:
    site = load_site(make_site("Cleveland"))
    pd.read_csv(site.data.path).head(1).to_csv(site.data.path, index=False)
    with pytest.raises(DataError, match=r"export\.csv: 1 of 1 rows are valid"):
        load_site_data(site)


def test_export_helper_refuses_unknown_hospital_and_columns(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown hospital"):
        export_hospital_csv("Springfield", tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="cannot rename columns"):
        export_hospital_csv("Cleveland", tmp_path / "x.csv", rename={"cholesterol": "c"})
    assert export_hospital_csv("Switzerland", tmp_path / "ch.csv") == 123
    assert "dataset" not in pd.read_csv(tmp_path / "ch.csv").columns
