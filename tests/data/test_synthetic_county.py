"""The synthetic county: copula fidelity, no copied row, sizes and case mix by level."""

from __future__ import annotations

import numpy as np
import pytest

from countyfl.data import CareLevel, InstitutionData
from countyfl.data.synthetic_county import (
    COLUMNS,
    COUNTY_SEAT,
    CountyShape,
    GaussianCopula,
    draw_population,
    fidelity,
    fit_copula,
    load,
    plan_county,
)
from countyfl.errors import ConfigError

SMALL = CountyShape(townships=3, villages_per_township=4)


@pytest.fixture(scope="module")
def copula() -> GaussianCopula:
    return fit_copula()


def test_no_synthetic_row_equals_a_real_row(copula: GaussianCopula) -> None:
    members = plan_county(SMALL, np.random.default_rng(1))
    people = np.concatenate(draw_population(copula, members, np.random.default_rng(2)))
    real = {row.tobytes() for row in copula.real_rows}
    assert len(people) > 3000
    assert not any(row.tobytes() in real for row in people)
    # Not vacuous: the same check finds real rows among the real rows.
    assert all(row.tobytes() in real for row in copula.real_rows[:50])


def test_the_untilted_copula_keeps_the_real_marginals_and_correlations(
    copula: GaussianCopula,
) -> None:
    drawn = copula.draw(20_000, np.random.default_rng(3))
    report = fidelity(copula.real_rows, drawn)
    assert report.largest_mean_difference < 0.05
    assert report.largest_sd_ratio_error < 0.08
    assert report.largest_correlation_difference < 0.08
    assert abs(report.synthetic_chd_rate - report.real_chd_rate) < 0.02
    # Binary and whole-number columns take real values only.
    for column in ("male", "diabetes", "age", "ten_year_chd"):
        j = COLUMNS.index(column)
        assert set(np.unique(drawn[:, j])) <= set(np.unique(copula.real_rows[:, j]))


def test_independent_columns_would_fail_the_correlation_check(copula: GaussianCopula) -> None:
    # The fidelity measure sees a copula without correlations: the check above can fail.
    rng = np.random.default_rng(4)
    shuffled = np.column_stack([rng.permutation(c) for c in copula.real_rows.T])
    assert fidelity(copula.real_rows, shuffled).largest_correlation_difference > 0.3


def test_the_county_has_its_levels_sizes_townships_and_case_mix() -> None:
    county = load(partition_seed=7, shape=SMALL, name="county-16")
    institutions = county.institutions
    assert len(institutions) == SMALL.num_institutions == 16
    by_level = {level: [i for i in institutions if i.level is level] for level in CareLevel}
    assert len(by_level[CareLevel.COUNTY]) == 1 and len(by_level[CareLevel.TOWNSHIP]) == 3
    assert len(by_level[CareLevel.VILLAGE]) == 12

    def people(i: InstitutionData) -> int:
        return i.num_train + i.num_test

    hospital = by_level[CareLevel.COUNTY][0]
    assert people(hospital) == 3000 and hospital.township == COUNTY_SEAT
    assert all(15 <= people(v) <= 120 for v in by_level[CareLevel.VILLAGE])
    assert all(120 <= people(t) <= 900 for t in by_level[CareLevel.TOWNSHIP])
    townships = {t.institution_id for t in by_level[CareLevel.TOWNSHIP]}
    assert all(t.township == t.institution_id for t in by_level[CareLevel.TOWNSHIP])
    assert {v.township for v in by_level[CareLevel.VILLAGE]} == townships
    assert all(i.num_test >= 1 for i in institutions)

    def mean_age_and_chd(group: list[InstitutionData]) -> tuple[float, float]:
        x = np.concatenate([np.concatenate([i.x_train, i.x_test]) for i in group])
        y = np.concatenate([np.concatenate([i.y_train, i.y_test]) for i in group])
        return float(x[:, 1].mean()), float(y.mean())  # age is feature 1

    county_age, county_chd = mean_age_and_chd(by_level[CareLevel.COUNTY])
    village_age, village_chd = mean_age_and_chd(by_level[CareLevel.VILLAGE])
    assert county_age > village_age + 0.3  # reference-scaled: 10 years per unit
    assert county_chd > village_chd
    assert any("largest correlation difference" in note for note in county.notes)


def test_the_county_is_the_same_for_a_seed_and_differs_between_seeds() -> None:
    first, again = load(partition_seed=5, shape=SMALL), load(partition_seed=5, shape=SMALL)
    other = load(partition_seed=6, shape=SMALL)
    for a, b in zip(first.institutions, again.institutions, strict=True):
        assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(first.institutions[0].x_train, other.institutions[0].x_train)


def test_a_county_without_townships_is_refused() -> None:
    with pytest.raises(ConfigError, match="township"):
        load(shape=CountyShape(townships=0))
