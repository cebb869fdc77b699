"""From a task's mapped rows to model inputs: encoding, per-institution split, scaling.

The same functions serve a simulation (one export divided into institutions by a column
or a synthetic county split) and a deployed site (its own export, one institution).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from countyfl.clinical.mapping import MappedRows
from countyfl.clinical.task import FeatureType, TaskDefinition
from countyfl.data.federated import CareLevel, FederatedDataset, FloatArray, InstitutionData
from countyfl.data.quarantine import QuarantinedRow
from countyfl.errors import DataError


def encode(task: TaskDefinition, record: dict[str, float | str | None]) -> list[float]:
    """One row's model inputs before scaling (category features as drop-first indicators)."""
    encoded: list[float] = []
    for feature in task.features:
        value = record[feature.name]
        if feature.type is FeatureType.CATEGORY:
            encoded += [1.0 if value == level else 0.0 for level in feature.categories[1:]]
        else:
            encoded.append(float(value))  # type: ignore[arg-type]
    return encoded


def raw_matrix(
    task: TaskDefinition, records: Sequence[dict[str, float | str | None]]
) -> npt.NDArray[np.float64]:
    """Every row's model inputs before scaling, float64 (float32-rounded if the task says so)."""
    matrix = np.asarray([encode(task, r) for r in records], dtype=np.float64).reshape(
        -1, len(task.feature_names)
    )
    if task.preprocessing.round_raw_to_float32:
        matrix = matrix.astype(np.float32).astype(np.float64)
    return matrix


def scale(task: TaskDefinition, raw: npt.NDArray[np.float64]) -> FloatArray:
    """``(raw - centre) / scale`` with the task's reference constants, as float32."""
    reference = task.reference_scale()
    names = task.feature_names
    centre = np.array([reference[n][0] for n in names], dtype=np.float64)
    spread = np.array([reference[n][1] for n in names], dtype=np.float64)
    return ((np.asarray(raw, dtype=np.float64) - centre) / spread).astype(np.float32)


def split_indices(
    task: TaskDefinition, labels: npt.NDArray[np.float32], random_state: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train and test positions of one institution's rows (stratified if both classes are big)."""
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    stratify = labels if (counts >= task.split.stratify_min_rows).all() else None
    from sklearn.model_selection import train_test_split  # slow to import; only to split

    train, test = train_test_split(
        np.arange(len(labels)),
        train_size=task.split.train_fraction,
        test_size=task.split.test_fraction,
        random_state=random_state,
        shuffle=True,
        stratify=stratify,
    )
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def split_random_state(task: TaskDefinition, partition_seed: int, index: int) -> int:
    """The train/test split's random state of a simulation's ``index``-th institution."""
    if task.split.random_state == "partition-seed-plus-index":
        return partition_seed + index
    return int(task.split.random_state)


def institution_data(
    task: TaskDefinition,
    records: Sequence[dict[str, float | str | None]],
    labels: Sequence[float],
    *,
    institution_id: str,
    name: str,
    level: CareLevel,
    random_state: int,
) -> InstitutionData:
    """One institution's rows encoded, split and scaled."""
    raw = raw_matrix(task, records)
    y = np.asarray(labels, dtype=np.float32)
    train, test = split_indices(task, y, random_state)
    features = scale(task, raw)
    return InstitutionData(
        institution_id=institution_id,
        name=name,
        level=level,
        x_train=features[train],
        y_train=y[train],
        x_test=features[test],
        y_test=y[test],
    )


def _county_groups(
    task: TaskDefinition, rows: MappedRows, partition_seed: int
) -> tuple[list[tuple[str, str, CareLevel]], npt.NDArray[np.int64]]:
    from countyfl.data.framingham import CountyLayout, assign_institutions

    assert task.simulation is not None and task.simulation.county is not None
    county = task.simulation.county
    layout = CountyLayout(
        townships=county.townships,
        villages=county.villages,
        county_share=county.county_share,
        township_share=county.township_share,
        concentration=county.concentration,
    )
    ages = np.asarray([float(r[county.age_feature]) for r in rows.values])  # type: ignore[arg-type]
    assignment = assign_institutions(ages, layout, partition_seed)
    return [(i, n, lvl) for i, n, lvl, _ in layout.institutions()], assignment


def federated_dataset(
    task: TaskDefinition,
    rows: MappedRows,
    *,
    partition_seed: int,
    source: Path | str,
    name: str | None = None,
) -> FederatedDataset:
    """A simulation's institutions from one export's mapped rows.

    Institutions are the task's ``[simulation]``: the split column's values (listed ones
    keep their id, name and level; unlisted ones are quarantined) or a synthetic county.
    """
    simulation = task.simulation
    if simulation is None:
        raise DataError(
            f"task {task.name} has no [simulation] table: say how one export is divided into "
            "institutions (split_column) before simulating it"
        )
    quarantined = list(rows.quarantined)
    keep = np.ones(len(rows.values), dtype=bool)
    layout: list[tuple[str, str, CareLevel]]
    if simulation.county is not None:
        layout, assignment = _county_groups(task, rows, partition_seed)
    else:
        if simulation.institutions:
            layout = [(i.id, i.name, CareLevel(i.level)) for i in simulation.institutions]
            index_of = {i.value: n for n, i in enumerate(simulation.institutions)}
        else:
            seen = list(dict.fromkeys(rows.groups))
            from countyfl.clinical.task import slugify

            layout = [(slugify(g)[:64], g, CareLevel.COUNTY) for g in seen]
            index_of = {g: n for n, g in enumerate(seen)}
        assignment = np.asarray([index_of.get(g, -1) for g in rows.groups], dtype=np.int64)
        for position in np.flatnonzero(assignment < 0):
            keep[position] = False
            quarantined.append(
                QuarantinedRow(
                    str(Path(str(source)).name),
                    rows.row_numbers[position],
                    rows.groups[position],
                    simulation.split_column or "",
                    rows.groups[position],
                    "not one of the task's institutions (simulation.institutions)",
                    rows.pseudonyms[position],
                )
            )
    institutions = []
    for index, (institution_id, display, level) in enumerate(layout):
        members = np.flatnonzero((assignment == index) & keep)
        if len(members) < task.split.min_rows:
            raise DataError(
                f"{source}: institution {display!r} has {len(members)} valid rows; each needs "
                f"at least {task.split.min_rows} (split.min_rows) for a train/test split"
            )
        institutions.append(
            institution_data(
                task,
                [rows.values[m] for m in members],
                [rows.labels[m] for m in members],
                institution_id=institution_id,
                name=display,
                level=level,
                random_state=split_random_state(task, partition_seed, index),
            )
        )
    quarantined.sort(key=lambda q: q.row_number)
    return FederatedDataset(
        name=name or task.name,
        feature_names=task.feature_names,
        institutions=tuple(institutions),
        rows_read=rows.rows_read,
        quarantined=tuple(quarantined),
        notes=tuple(f"{f}: converted {c}" for f, c in rows.conversions.items()),
    )
