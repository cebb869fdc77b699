"""Held-out evaluation: the registry measures a version's metrics itself before promotion.

The metrics in a version's lineage are what its run reported about itself; a promotion
is judged by what the model does instead. The promoter supplies held-out data the model
never trained on, as a CSV file::

    age,resting-bp,cholesterol,...,label
    63,145,233,...,1

one column per raw feature of the model's input transform (``features.names``, in any
order, in the units of the clinical schema, before standardisation) and a ``label``
column of 0 or 1. The registry standardises the rows with the version's own transform,
runs the version's own weights (``countyfl.training.local.predict_proba``, the function
training evaluated with) and computes accuracy, AUC, Brier score and expected calibration
error (``countyfl.training.metrics``). The sha256 of the data (of the file's bytes) is
recorded with the metrics and in the audit log, so anyone holding the file can repeat it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from countyfl.registry.errors import EvaluationDataError, UnsafeModelError
from countyfl.registry.schemas import FeatureTransform

LABEL_COLUMN = "label"
MIN_ROWS = 30
MIN_PER_CLASS = 5
MAX_ROWS = 1_000_000
MAX_FILE_BYTES = 64 * 1024 * 1024
GATED_METRICS = ("accuracy", "auc")
"""Metrics a promotion threshold may name: measured here, higher is better."""
MEASURED_METRICS = ("accuracy", "auc", "brier", "ece")

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@dataclass(frozen=True)
class EvaluationData:
    """Held-out rows: raw features by name, 0/1 labels, and the sha256 of their source."""

    names: tuple[str, ...]
    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.float64]
    sha256: str
    source: str
    """Where the rows came from (a file name), for messages only; never audited."""

    @property
    def rows(self) -> int:
        """How many rows."""
        return int(self.labels.size)

    @property
    def positives(self) -> int:
        """How many rows have label 1."""
        return int(self.labels.sum())

    def columns_for(self, transform: FeatureTransform, label: str) -> npt.NDArray[np.float64]:
        """The feature matrix in the order of ``transform.names``.

        Raises
        ------
        EvaluationDataError
            If the data's columns are not exactly the transform's features.
        """
        wanted, given = list(transform.names), set(self.names)
        if set(wanted) != given:
            missing = sorted(set(wanted) - given)
            extra = sorted(given - set(wanted))
            raise EvaluationDataError(
                f"the evaluation data {self.source} do not fit {label}: "
                + (f"missing columns {missing}; " if missing else "")
                + (f"unknown columns {extra}; " if extra else "")
                + f"give one column per feature of its input transform ({', '.join(wanted)}) "
                f"and {LABEL_COLUMN!r}"
            )
        order = [self.names.index(name) for name in wanted]
        return self.features[:, order]


def _checked(
    names: tuple[str, ...],
    features: npt.NDArray[np.float64],
    labels: npt.NDArray[np.float64],
    source: str,
) -> None:
    import numpy as np

    if len(set(names)) != len(names):
        raise EvaluationDataError(f"{source}: a column is named twice")
    rows = labels.size
    if not MIN_ROWS <= rows <= MAX_ROWS:
        raise EvaluationDataError(
            f"{source} holds {rows} rows; give {MIN_ROWS} to {MAX_ROWS} held-out rows"
        )
    positives = int(labels.sum())
    if min(positives, rows - positives) < MIN_PER_CLASS:
        raise EvaluationDataError(
            f"{source} holds {positives} rows with label 1 and {rows - positives} with label "
            f"0; give at least {MIN_PER_CLASS} of each, or AUC and accuracy mean little"
        )
    if not np.isfinite(features).all():
        raise EvaluationDataError(f"{source} holds a value that is not a finite number")


def evaluation_data(
    names: tuple[str, ...] | list[str],
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    source: str = "evaluation data",
) -> EvaluationData:
    """Evaluation data from arrays; its sha256 is that of :func:`to_csv` of them.

    Raises
    ------
    EvaluationDataError
        If the shapes disagree, a label is not 0 or 1, a value is not finite, or there are
        too few rows or too few of a class.
    """
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    columns = tuple(str(name) for name in names)
    if x.ndim != 2 or y.ndim != 1 or x.shape != (y.size, len(columns)):
        raise EvaluationDataError(
            f"{source}: features of shape {x.shape} and labels of shape {y.shape} do not fit "
            f"{len(columns)} columns"
        )
    if not np.isin(y, (0.0, 1.0)).all():
        raise EvaluationDataError(f"{source}: every label must be 0 or 1")
    _checked(columns, x, y, source)
    text = to_csv(columns, x, y)
    return EvaluationData(columns, x, y, hashlib.sha256(text.encode("utf-8")).hexdigest(), source)


def to_csv(
    names: tuple[str, ...], features: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]
) -> str:
    """The data as the CSV text :func:`read_evaluation_csv` reads (values as ``repr``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*names, LABEL_COLUMN])
    for row, label in zip(features, labels, strict=True):
        writer.writerow([*(repr(float(v)) for v in row), int(label)])
    return out.getvalue()


def read_evaluation_csv(path: Path) -> EvaluationData:
    """Read held-out evaluation data from a CSV file (see the module docstring).

    Raises
    ------
    EvaluationDataError
        If the file cannot be read, is too large, or a row, column or value is not usable
        (the message names the file, row and column).
    """
    import numpy as np

    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise EvaluationDataError(
                f"{source} has {size} bytes, more than the {MAX_FILE_BYTES} accepted"
            )
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as error:
        raise EvaluationDataError(f"{source} cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise EvaluationDataError(f"{source} is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or LABEL_COLUMN not in header:
        raise EvaluationDataError(
            f"{source} needs a header row with the model's feature names and {LABEL_COLUMN!r}"
        )
    names = tuple(column.strip() for column in header)
    label_at = names.index(LABEL_COLUMN)
    features: list[list[float]] = []
    labels: list[float] = []
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(names):
            raise EvaluationDataError(
                f"{source}:{number}: {len(row)} values for {len(names)} columns"
            )
        values = []
        for column, cell in zip(names, row, strict=True):
            try:
                value = float(cell)
            except ValueError:
                raise EvaluationDataError(
                    f"{source}:{number}: column {column!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise EvaluationDataError(
                    f"{source}:{number}: column {column!r} is not a finite number"
                )
            values.append(value)
        label = values.pop(label_at)
        if label not in (0.0, 1.0):
            raise EvaluationDataError(f"{source}:{number}: {LABEL_COLUMN!r} must be 0 or 1")
        features.append(values)
        labels.append(label)
        if len(labels) > MAX_ROWS:
            raise EvaluationDataError(f"{source} holds more than {MAX_ROWS} rows")
    columns = names[:label_at] + names[label_at + 1 :]
    x = np.asarray(features, dtype=np.float64).reshape(len(labels), len(columns))
    y = np.asarray(labels, dtype=np.float64)
    _checked(columns, x, y, source)
    return EvaluationData(columns, x, y, hashlib.sha256(raw).hexdigest(), path.name)


def measure(
    state: dict[str, npt.NDArray[Any]],
    *,
    architecture: str,
    transform: FeatureTransform,
    data: EvaluationData,
    label: str,
) -> dict[str, float]:
    """The version's accuracy, AUC, Brier score and ECE on ``data``, measured here.

    Raises
    ------
    EvaluationDataError
        If the data's columns are not the transform's features.
    UnsafeModelError
        If the weights do not fit the architecture, or the model answers a non-finite
        probability for a held-out row.
    """
    import numpy as np

    from countyfl.registry.artifacts import build_module, probabilities
    from countyfl.training.metrics import classification_metrics

    raw = data.columns_for(transform, label)
    mean = np.asarray(transform.mean, dtype=np.float64)
    scale = np.asarray(transform.scale, dtype=np.float64)
    inputs = ((raw - mean) / scale).astype(np.float32)
    module = build_module(architecture, state, len(transform.names), label)
    answered = probabilities(module, inputs)
    if not np.isfinite(answered).all():
        raise UnsafeModelError(
            f"{label} answers a non-finite probability for {int((~np.isfinite(answered)).sum())} "
            "held-out rows; it cannot be promoted"
        )
    measured = classification_metrics(answered, data.labels)
    return {name: float(measured[name]) for name in MEASURED_METRICS}
