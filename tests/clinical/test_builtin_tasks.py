"""Oracle: the built-in scenarios as task files give the data sets of the hand-written loaders."""

from __future__ import annotations

import numpy as np
import pytest

from countyfl import scenarios
from countyfl.clinical.task import load_task
from countyfl.data import fed_heart_disease, framingham
from countyfl.data.federated import FederatedDataset

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _assert_same(new: FederatedDataset, old: FederatedDataset) -> None:
    assert new.feature_names == old.feature_names
    assert new.rows_read == old.rows_read
    assert {q.row_number for q in new.quarantined} == {q.row_number for q in old.quarantined}
    assert [i.institution_id for i in new.institutions] == [
        i.institution_id for i in old.institutions
    ]
    for mine, theirs in zip(new.institutions, old.institutions, strict=True):
        assert (mine.name, mine.level) == (theirs.name, theirs.level)
        for array in ARRAYS:
            assert np.array_equal(getattr(mine, array), getattr(theirs, array)), (
                mine.institution_id,
                array,
            )


def test_fed_heart_disease_task_file_gives_flambys_splits_bit_for_bit() -> None:
    new = scenarios.get("fed-heart-disease").loader(None, 2026)
    old = fed_heart_disease.load()
    _assert_same(new, old)
    assert new.quarantined_row_count == 180
    assert [(i.num_train, i.num_test) for i in new.institutions] == [
        (200, 104),
        (171, 89),
        (30, 16),
        (85, 45),
    ]


@pytest.mark.parametrize("partition_seed", [2026, 7])
def test_framingham_task_file_gives_the_county_split_bit_for_bit(partition_seed: int) -> None:
    new = scenarios.get("framingham-county").loader(None, partition_seed)
    _assert_same(new, framingham.load(partition_seed=partition_seed))


def test_built_in_scenarios_keep_their_constants_and_defaults() -> None:
    heart = scenarios.get("fed-heart-disease")
    assert heart.reference_scale == fed_heart_disease.REFERENCE_SCALE
    assert heart.registry_name == "heart-disease-diagnosis"
    assert heart.data_schema == "heart-disease"
    assert heart.default_seeds == (42, 43, 44, 45, 46)
    assert heart.reference["fedavg"] == 0.685
    assert heart.defaults == {
        "model": "diagnosis-logreg",
        "num-server-rounds": 15,
        "local-steps": 5,
        "batch-size": 16,
        "learning-rate": 0.05,
        "optimizer": "sgd",
        "momentum": 0.9,
    }
    county = scenarios.get("framingham-county")
    assert dict(county.reference_scale) == {
        name: framingham.REFERENCE_SCALE[field]
        for name, field in zip(framingham.FEATURE_NAMES, framingham.FEATURES, strict=True)
    }
    assert county.num_institutions == 13
    assert county.registry_name == "coronary-risk-10y"
    assert county.defaults["local-steps"] == 20
    # The risk model is recalibrated after the run (docs/privacy.md, "Intercept calibration")
    assert county.defaults["calibration"] == "intercept"
    assert scenarios.get("county").defaults["calibration"] == "intercept"


def test_framingham_fill_rules_match_the_hand_written_ones() -> None:
    task = load_task(scenarios.TASKS_DIR / "framingham-county.toml")
    for field, value in framingham.IMPUTATION_VALUES.items():
        assert task.feature(field.replace("_", "-")).fill == value
