"""Containers for one institution's data and a whole federation's partition."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from countyfl.data.quarantine import QuarantinedRow

FloatArray = npt.NDArray[np.float32]


class CareLevel(StrEnum):
    """The three levels of a county medical community."""

    COUNTY = "county"
    TOWNSHIP = "township"
    VILLAGE = "village"


@dataclass(frozen=True)
class InstitutionData:
    """One institution's preprocessed train and test split (features float32, labels 0/1)."""

    institution_id: str
    name: str
    level: CareLevel
    x_train: FloatArray
    y_train: FloatArray
    x_test: FloatArray
    y_test: FloatArray
    township: str = ""
    """The township the institution belongs to (synthetic counties; empty where unknown)."""

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclass(frozen=True)
class FederatedDataset:
    """Every institution of a scenario, the shared feature list and what was quarantined."""

    name: str
    feature_names: tuple[str, ...]
    institutions: tuple[InstitutionData, ...]
    rows_read: int
    quarantined: tuple[QuarantinedRow, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def quarantined_row_count(self) -> int:
        return len({q.row_number for q in self.quarantined})

    def pooled(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """All institutions' train and test rows stacked (the centralised baseline's data)."""
        return (
            np.concatenate([i.x_train for i in self.institutions]),
            np.concatenate([i.y_train for i in self.institutions]),
            np.concatenate([i.x_test for i in self.institutions]),
            np.concatenate([i.y_test for i in self.institutions]),
        )
