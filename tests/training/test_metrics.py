"""Classification and calibration metrics from predicted probabilities."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from countyfl import protocol
from countyfl.training.metrics import classification_metrics, expected_calibration_error


def test_ece_hand_computed_example() -> None:
    probabilities = np.array([0.05, 0.32, 0.38, 0.93])
    labels = np.array([0, 1, 0, 1])
    # bin [0, .1]: |0 - .05| * 1/4; bin (.3, .4]: |.5 - .35| * 2/4; bin (.9, 1]: |1 - .93| * 1/4
    expected = 0.05 / 4 + 0.15 * 2 / 4 + 0.07 / 4
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-12)


def test_ece_depends_on_the_number_of_bins() -> None:
    probabilities = np.array([0.1, 0.4])
    labels = np.array([0, 1])
    # One bin: |0.5 - 0.25| = 0.25. Ten bins: (0.1 + 0.6) / 2 = 0.35.
    assert expected_calibration_error(probabilities, labels, bins=1) == pytest.approx(0.25)
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(0.35)


def test_ece_extremes() -> None:
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([0, 1])) == 1.0
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))


_groups = st.lists(
    st.integers(1, 20).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(groups=_groups, bins=st.integers(1, 20))
def test_ece_is_zero_when_perfectly_calibrated(groups: list[tuple[int, int]], bins: int) -> None:
    # Each group of n rows predicts k/n and has exactly k positives. Any union of
    # calibrated groups inside a bin is calibrated too, so every bin's gap is 0.
    probabilities = np.concatenate([np.full(n, k / n) for n, k in groups])
    labels = np.concatenate([np.r_[np.ones(k), np.zeros(n - k)] for n, k in groups])
    assert expected_calibration_error(probabilities, labels, bins=bins) == pytest.approx(
        0.0, abs=1e-12
    )


@settings(max_examples=200, deadline=None)
@given(
    probability=st.floats(0.0, 1.0),
    labels=st.lists(st.integers(0, 1), min_size=1, max_size=50),
    bins=st.integers(1, 20),
)
def test_ece_of_a_constant_prediction_is_its_gap_to_the_rate(
    probability: float, labels: list[int], bins: int
) -> None:
    y = np.array(labels, dtype=float)
    p = np.full(len(labels), probability)
    ece = expected_calibration_error(p, y, bins=bins)
    assert ece == pytest.approx(abs(y.mean() - probability), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 1)), min_size=1, max_size=60))
def test_ece_lies_in_unit_interval(pairs: list[tuple[float, int]]) -> None:
    p, y = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
    assert 0.0 <= expected_calibration_error(p, y) <= 1.0 + 1e-12


def test_classification_metrics_hand_computed() -> None:
    probabilities = np.array([0.9, 0.6, 0.4, 0.2, 0.7])
    labels = np.array([1, 0, 1, 0, 1])
    metrics = classification_metrics(probabilities, labels)
    assert set(metrics) == {protocol.ACCURACY, protocol.AUC, protocol.BRIER, protocol.ECE}
    assert metrics[protocol.ACCURACY] == pytest.approx(3 / 5)  # 0.9, 0.2, 0.7 right
    # Positive/negative pairs ranked correctly: (.9 > .6, .2), (.4 > .2 only), (.7 > .6, .2)
    assert metrics[protocol.AUC] == pytest.approx(5 / 6)
    brier = np.mean((probabilities - labels) ** 2)
    assert metrics[protocol.BRIER] == pytest.approx(brier)
    assert metrics[protocol.ECE] == pytest.approx(expected_calibration_error(probabilities, labels))


def test_accuracy_threshold_is_inclusive_at_one_half() -> None:
    metrics = classification_metrics(np.array([0.5, 0.5]), np.array([1, 0]))
    assert metrics[protocol.ACCURACY] == 0.5


@pytest.mark.parametrize("label", [0, 1])
def test_auc_is_nan_when_one_class_is_absent(label: int) -> None:
    probabilities = np.array([0.2, 0.7, 0.9])
    metrics = classification_metrics(probabilities, np.full(3, label))
    assert math.isnan(metrics[protocol.AUC])
    assert not math.isnan(metrics[protocol.ACCURACY])
    assert metrics[protocol.BRIER] == pytest.approx(np.mean((probabilities - label) ** 2))


def test_empty_input_gives_nan_everywhere() -> None:
    metrics = classification_metrics(np.array([]), np.array([]))
    assert all(math.isnan(value) for value in metrics.values())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(2, 300),
    levels=st.sampled_from([3, 10, 1000]),  # few levels: many ties
)
def test_auc_and_brier_equal_scikit_learns(seed: int, size: int, levels: int) -> None:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=size).astype(np.float64)
    labels[:2] = (0.0, 1.0)  # both classes
    probabilities = np.round(rng.random(size) * levels) / levels
    metrics = classification_metrics(probabilities, labels)
    assert metrics[protocol.AUC] == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-12)
    assert metrics[protocol.BRIER] == pytest.approx(
        brier_score_loss(labels, probabilities), abs=1e-12
    )
