"""Per-site standardisation and the pooled view of a federation."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from countyfl.data.federated import CareLevel, FederatedDataset, InstitutionData, standardize

_values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def _splits(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    columns = draw(st.integers(1, 5))
    train = draw(arrays(np.float32, (draw(st.integers(2, 30)), columns), elements=_values))
    test = draw(arrays(np.float32, (draw(st.integers(0, 10)), columns), elements=_values))
    return train, test


@settings(max_examples=80, deadline=None)
@given(splits=_splits())
def test_standardize_uses_train_statistics_only(splits: tuple[np.ndarray, np.ndarray]) -> None:
    x_train, x_test = splits
    z_train, z_test = standardize(x_train, x_test)
    assert z_train.dtype == np.float32 and z_test.dtype == np.float32
    assert z_train.shape == x_train.shape and z_test.shape == x_test.shape
    raw = x_train.astype(np.float64)
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    # Oracle in float64: the train split's own mean and std, never the test split's.
    scale = np.where(std > 1e-3, std, 1.0)
    varying = std > 1e-3 * np.maximum(1.0, np.abs(mean))
    expected_test = (x_test.astype(np.float64) - mean) / scale
    np.testing.assert_allclose(z_test[:, varying], expected_test[:, varying], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(z_train[:, varying].mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(z_train[:, varying].std(axis=0), 1.0, atol=1e-3)


def test_constant_column_is_only_centred() -> None:
    x_train = np.array([[3.0, 1.0], [3.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    x_test = np.array([[5.0, 2.0]], dtype=np.float32)
    z_train, z_test = standardize(x_train, x_test)
    np.testing.assert_array_equal(z_train[:, 0], [0.0, 0.0, 0.0])
    assert z_test[0, 0] == 2.0  # (5 - 3) / 1
    std = np.std([1.0, 2.0, 3.0])
    np.testing.assert_allclose(z_test[0, 1], 0.0)
    np.testing.assert_allclose(z_train[:, 1], np.array([-1.0, 0.0, 1.0]) / std, rtol=1e-6)


def _institution(name: str, rows: int, offset: float) -> InstitutionData:
    x = np.full((rows, 2), offset, dtype=np.float32)
    y = np.arange(rows, dtype=np.float32) % 2
    return InstitutionData(name, name, CareLevel.VILLAGE, x, y, x[:1] + 0.5, y[:1])


def test_pooled_stacks_every_institution_in_order() -> None:
    a, b = _institution("a", 3, 1.0), _institution("b", 5, 2.0)
    data = FederatedDataset("toy", ("f1", "f2"), (a, b), rows_read=10)
    x_train, y_train, x_test, y_test = data.pooled()
    assert x_train.shape == (8, 2) and y_train.shape == (8,)
    np.testing.assert_array_equal(x_train[:3], a.x_train)
    np.testing.assert_array_equal(x_train[3:], b.x_train)
    np.testing.assert_array_equal(x_test, np.concatenate([a.x_test, b.x_test]))
    np.testing.assert_array_equal(y_test, np.concatenate([a.y_test, b.y_test]))
    assert data.num_features == 2
    assert (a.num_train, a.num_test, b.num_train) == (3, 1, 5)
