"""Framingham split over a synthetic county: sizes, reproducibility, non-IID ages, fills."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest

from countyfl.data import framingham
from countyfl.data.federated import CareLevel, FederatedDataset
from countyfl.data.framingham import (
    FEATURES,
    MIN_ROWS_PER_INSTITUTION,
    MISSING_VALUE_RULES,
    REFERENCE_SCALE,
    CountyLayout,
    MissingValueRule,
)
from countyfl.data.schema import FraminghamRecord
from countyfl.data.sources import FRAMINGHAM_FILE, packaged_path
from countyfl.errors import ConfigError, DataFileMissingError


@pytest.fixture(scope="module")
def dataset() -> FederatedDataset:
    return framingham.load()


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return pd.read_csv(packaged_path(FRAMINGHAM_FILE))


def _raw_feature(values: np.ndarray, name: str) -> np.ndarray:
    """Undo the fixed reference scaling of one feature column."""
    centre, scale = REFERENCE_SCALE[name]
    return values[:, FEATURES.index(name)].astype(np.float64) * scale + centre


def _all_rows(institution: framingham.InstitutionData) -> np.ndarray:
    return np.concatenate([institution.x_train, institution.x_test])


def test_thirteen_institutions_at_three_levels(dataset: FederatedDataset) -> None:
    assert len(dataset.institutions) == 13
    levels = Counter(i.level for i in dataset.institutions)
    assert levels == {CareLevel.COUNTY: 1, CareLevel.TOWNSHIP: 4, CareLevel.VILLAGE: 8}
    assert dataset.institutions[0].level is CareLevel.COUNTY
    assert len({i.institution_id for i in dataset.institutions}) == 13
    assert dataset.feature_names == framingham.FEATURE_NAMES
    assert dataset.num_features == len(FEATURES)


def test_sizes_unequal_and_above_the_minimum(dataset: FederatedDataset) -> None:
    sizes = [i.num_train + i.num_test for i in dataset.institutions]
    assert min(sizes) >= MIN_ROWS_PER_INSTITUTION
    assert len(set(sizes)) > 1
    assert max(sizes) >= 2 * min(sizes)
    # The county hospital has the largest expected share.
    assert sizes[0] == max(sizes)


def test_every_used_row_is_in_exactly_one_institution(
    dataset: FederatedDataset, raw: pd.DataFrame
) -> None:
    used = sum(i.num_train + i.num_test for i in dataset.institutions)
    assert dataset.rows_read == len(raw)
    assert used + dataset.quarantined_row_count == dataset.rows_read
    # The real export has no row whose missing-value rule is to quarantine it, so every
    # row is used: same multiset of ages and labels as the export, nothing duplicated.
    assert dataset.quarantined_row_count == 0
    pooled_x, pooled_y, test_x, test_y = dataset.pooled()
    ages = np.rint(_raw_feature(np.concatenate([pooled_x, test_x]), "age")).astype(int)
    assert sorted(ages.tolist()) == sorted(raw["age"].tolist())
    labels = np.concatenate([pooled_y, test_y])
    assert int(labels.sum()) == int(raw["TenYearCHD"].sum())


def test_each_institution_splits_seventy_thirty(dataset: FederatedDataset) -> None:
    for institution in dataset.institutions:
        n = institution.num_train + institution.num_test
        assert institution.num_train == pytest.approx(framingham.TRAIN_FRACTION * n, abs=1)
        for y in (institution.y_train, institution.y_test):
            assert set(np.unique(y)) <= {0.0, 1.0}


def test_no_missing_values_left_in_any_feature_array(dataset: FederatedDataset) -> None:
    for institution in dataset.institutions:
        for array in (
            institution.x_train,
            institution.y_train,
            institution.x_test,
            institution.y_test,
        ):
            assert array.dtype == np.float32
            assert not np.isnan(array).any(), institution.institution_id


def test_features_use_fixed_reference_scaling(dataset: FederatedDataset) -> None:
    # The same raw value maps to the same input everywhere: raw binary columns stay 0/1
    # after undoing the reference scaling, at every institution.
    for institution in dataset.institutions:
        rows = _all_rows(institution)
        for name in ("male", "current_smoker", "diabetes", "prevalent_stroke"):
            values = _raw_feature(rows, name)
            np.testing.assert_allclose(values, np.round(values), atol=1e-4)
            assert set(np.unique(np.round(values))) <= {0.0, 1.0}


def test_same_seed_gives_identical_arrays() -> None:
    first, second = framingham.load(partition_seed=11), framingham.load(partition_seed=11)
    for a, b in zip(first.institutions, second.institutions, strict=True):
        for name in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_different_seed_gives_a_different_assignment(dataset: FederatedDataset) -> None:
    other = framingham.load(partition_seed=7)
    sizes = [i.num_train + i.num_test for i in dataset.institutions]
    other_sizes = [i.num_train + i.num_test for i in other.institutions]
    differs = sizes != other_sizes or any(
        not np.array_equal(a.x_train, b.x_train)
        for a, b in zip(dataset.institutions, other.institutions, strict=True)
    )
    assert differs


def test_age_mix_differs_across_institutions(dataset: FederatedDataset) -> None:
    mean_ages = [float(_raw_feature(_all_rows(i), "age").mean()) for i in dataset.institutions]
    assert max(mean_ages) - min(mean_ages) > 3.0, mean_ages
    # And the age-band mix, not only its mean: the share of over-55s varies widely.
    old_shares = [
        float((_raw_feature(_all_rows(i), "age") >= 55).mean()) for i in dataset.institutions
    ]
    assert max(old_shares) - min(old_shares) > 0.1, old_shares


def test_every_schema_field_has_a_missing_value_rule() -> None:
    assert set(MISSING_VALUE_RULES) == set(FraminghamRecord.model_fields)
    # Every model feature is filled or quarantined, never left missing.
    for name in FEATURES:
        assert MISSING_VALUE_RULES[name] is not MissingValueRule.NOT_A_FEATURE
        assert name in FraminghamRecord.model_fields
    # A field the schema requires cannot be filled: its rule must quarantine.
    for name, info in FraminghamRecord.model_fields.items():
        if type(None) not in get_args(info.annotation):
            assert MISSING_VALUE_RULES[name] is MissingValueRule.QUARANTINE, name


def test_notes_count_the_filled_values(dataset: FederatedDataset, raw: pd.DataFrame) -> None:
    notes = " ".join(dataset.notes)
    for name in ("glucose", "total_cholesterol", "bmi"):
        column = FraminghamRecord.model_fields[name].alias or name
        assert f"{name} {int(raw[column].isna().sum())} " in notes


def _matrix(rows: list[dict[str, float]]) -> np.ndarray:
    defaults = {name: REFERENCE_SCALE[name][0] for name in FEATURES}
    return np.array([[row.get(name, defaults[name]) for name in FEATURES] for row in rows])


def test_fill_missing_zero_for_non_smokers_reference_value_for_smokers() -> None:
    nan = float("nan")
    matrix = _matrix(
        [
            {"current_smoker": 1, "cigarettes_per_day": 10},
            {"current_smoker": 1, "cigarettes_per_day": 90},
            {"current_smoker": 0, "cigarettes_per_day": nan},
            {"current_smoker": 1, "cigarettes_per_day": nan},
        ]
    )
    filled = framingham.fill_missing(matrix)
    column = FEATURES.index("cigarettes_per_day")
    assert filled[2, column] == 0.0
    assert filled[3, column] == framingham.IMPUTATION_VALUES["cigarettes_per_day"]
    assert np.isnan(matrix[2, column])  # the input is not modified


def test_fill_missing_uses_reference_values_never_the_other_rows() -> None:
    nan = float("nan")
    rows = [
        {"glucose": 70, "bmi": nan},
        {"glucose": 80, "bmi": 20},
        {"glucose": nan, "bmi": nan},
    ]
    filled = framingham.fill_missing(_matrix(rows))
    assert filled[2, FEATURES.index("glucose")] == framingham.IMPUTATION_VALUES["glucose"]
    assert filled[0, FEATURES.index("bmi")] == framingham.IMPUTATION_VALUES["bmi"]
    # One record more or less never changes another record's filled inputs (DP-SGD bounds
    # each record's influence by clipping its own gradient only).
    more = framingham.fill_missing(_matrix([*rows, {"glucose": 400, "bmi": 60}]))
    np.testing.assert_array_equal(more[:3], filled)
    assert not np.isnan(filled).any()
    untouched = [c for c, name in enumerate(FEATURES) if name not in ("glucose", "bmi")]
    np.testing.assert_array_equal(filled[:, untouched], _matrix(rows)[:, untouched])


def test_assign_institutions_is_a_reproducible_partition() -> None:
    ages = np.random.default_rng(0).integers(30, 75, size=3000)
    layout = CountyLayout()
    first = framingham.assign_institutions(ages, layout, partition_seed=5)
    again = framingham.assign_institutions(ages, layout, partition_seed=5)
    other = framingham.assign_institutions(ages, layout, partition_seed=6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    sizes = np.bincount(first, minlength=len(layout.institutions()))
    assert len(sizes) == 13 and sizes.sum() == len(ages)
    assert sizes.min() >= MIN_ROWS_PER_INSTITUTION


def test_too_few_people_for_the_layout_raises_config_error() -> None:
    ages = np.full(13 * MIN_ROWS_PER_INSTITUTION - 1, 50)
    with pytest.raises(ConfigError, match=str(MIN_ROWS_PER_INSTITUTION)):
        framingham.assign_institutions(ages, CountyLayout(), partition_seed=1)


@pytest.mark.parametrize(
    "layout",
    [
        CountyLayout(townships=0),
        CountyLayout(county_share=0.0),
        CountyLayout(county_share=0.6, township_share=0.5),
        CountyLayout(concentration=0.0),
    ],
)
def test_invalid_layout_raises_config_error(layout: CountyLayout) -> None:
    with pytest.raises(ConfigError):
        layout.validate()


def test_layout_shares_sum_to_one() -> None:
    shares = [share for *_, share in CountyLayout().institutions()]
    assert sum(shares) == pytest.approx(1.0)


@pytest.mark.parametrize(("age", "band"), [(18, 0), (44, 0), (45, 1), (54, 1), (55, 2), (65, 3)])
def test_age_band(age: int, band: int) -> None:
    assert framingham.age_band(age) == band


def test_missing_file_raises_data_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DataFileMissingError):
        framingham.load(tmp_path / "absent.csv")


def test_a_bad_row_is_quarantined_not_partitioned(tmp_path: Path, raw: pd.DataFrame) -> None:
    edited = raw.copy()
    edited["sysBP"] = edited["sysBP"].astype(object)
    edited.loc[9, "sysBP"] = "n/a"
    edited.loc[20, "age"] = np.nan
    path = tmp_path / "framingham.csv"
    edited.to_csv(path, index=False)
    data = framingham.load(path)
    assert sorted((q.row_number, q.field) for q in data.quarantined) == [(10, "sysBP"), (21, "age")]
    used = sum(i.num_train + i.num_test for i in data.institutions)
    assert used == len(raw) - 2
