"""The common schema matches the real exports it is meant to read."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import BaseModel, ValidationError

from countyfl.data.schema import FraminghamRecord, HeartDiseaseRecord
from countyfl.data.sources import FRAMINGHAM_FILE, HEART_DISEASE_FILE, packaged_path


@pytest.mark.parametrize(
    ("model", "filename"),
    [(HeartDiseaseRecord, HEART_DISEASE_FILE), (FraminghamRecord, FRAMINGHAM_FILE)],
)
def test_every_schema_column_is_in_the_real_export(model: type[BaseModel], filename: str) -> None:
    columns = set(pd.read_csv(packaged_path(filename), nrows=1).columns)
    aliases = {info.alias or name for name, info in model.model_fields.items()}
    assert aliases <= columns, aliases - columns


def test_records_accept_clinical_names_and_are_frozen() -> None:
    record = HeartDiseaseRecord(
        age=60,
        sex="Female",
        hospital="Switzerland",
        chest_pain="asymptomatic",
        resting_bp=0,
        cholesterol=0,
        fasting_blood_sugar_high=False,
        resting_ecg="normal",
        max_heart_rate=120,
        exercise_angina=True,
        st_depression=-1.0,
        diagnosis=3,
    )
    assert record.hospital == "Switzerland"
    assert record.cholesterol == 0.0  # UCI's "not measured" is kept as a value
    with pytest.raises(ValidationError):
        record.age = 61  # type: ignore[misc]


@pytest.mark.parametrize(("field", "low", "high"), [("age", 18, 100), ("diagnosis", 0, 4)])
def test_range_bounds_are_inclusive(field: str, low: int, high: int) -> None:
    base = dict(
        age=60,
        sex="Male",
        hospital="Cleveland",
        chest_pain="typical angina",
        resting_bp=120,
        cholesterol=200,
        fasting_blood_sugar_high=False,
        resting_ecg="normal",
        max_heart_rate=120,
        exercise_angina=False,
        st_depression=0.0,
        diagnosis=0,
    )
    for ok in (low, high):
        assert getattr(HeartDiseaseRecord(**{**base, field: ok}), field) == ok
    for bad in (low - 1, high + 1):
        with pytest.raises(ValidationError) as raised:
            HeartDiseaseRecord(**{**base, field: bad})
        assert raised.value.errors()[0]["loc"] == (field,)
