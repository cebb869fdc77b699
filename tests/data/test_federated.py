"""The pooled view of a federation."""

from __future__ import annotations

import numpy as np

from countyfl.data.federated import CareLevel, FederatedDataset, InstitutionData


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
