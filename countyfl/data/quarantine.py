"""Row validation against the common schema and the quarantine of rows that fail it."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel, ValidationError

RecordT = TypeVar("RecordT", bound=BaseModel)

QUARANTINE_COLUMNS = (
    "source",
    "row_number",
    "institution",
    "field",
    "value",
    "reason",
    "pseudonym",
)


@dataclass(frozen=True)
class QuarantinedRow:
    """One problem found in one input row; ``row_number`` is 1-based, header excluded."""

    source: str
    row_number: int
    institution: str
    field: str
    value: str
    reason: str
    pseudonym: str = ""
    """The row's pseudonym (keyed HMAC of its identifiers), never an identifier itself."""


@dataclass(frozen=True)
class ValidationOutcome:
    """Rows that passed (with their 1-based row numbers) and the problems of those that did not."""

    records: list[Any]
    row_numbers: list[int]
    quarantined: list[QuarantinedRow]

    @property
    def quarantined_row_count(self) -> int:
        return len({q.row_number for q in self.quarantined})


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _column_of(model: type[BaseModel], field: str) -> str:
    info = model.model_fields.get(field)
    return info.alias if info is not None and info.alias else field


def validate_rows(
    frame: pd.DataFrame,
    model: type[RecordT],
    *,
    source: str,
    required: Sequence[str] | None = None,
    missing_reason: str = "missing value",
    institution_column: str | None = None,
) -> ValidationOutcome:
    """Validate every row of ``frame`` against ``model``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows as read from the export, column names as in the file.
    model : type of pydantic.BaseModel
        The schema; its field aliases name the file's columns.
    source : str
        Name of the file, written into every quarantine entry.
    required : sequence of str, optional
        Columns that must not be missing even if the schema allows ``None`` there
        (a loader's complete-case rule). Missing values in them are quarantined with
        ``missing_reason``.
    missing_reason : str
        The reason written for a missing value in a required column.
    institution_column : str, optional
        Column naming the institution a row belongs to, for the quarantine file.

    Returns
    -------
    ValidationOutcome
        The validated records in file order and one quarantine entry per problem.
    """
    missing_columns = [
        _column_of(model, name)
        for name, info in model.model_fields.items()
        if info.is_required() and _column_of(model, name) not in frame.columns
    ]
    if missing_columns:
        from countyfl.errors import SchemaError

        raise SchemaError(
            f"{source}: columns {missing_columns} required by {model.__name__} are missing; "
            f"the file has {list(frame.columns)}. Map the export's columns onto the schema."
        )
    required_columns = list(required or [])
    records: list[Any] = []
    row_numbers: list[int] = []
    quarantined: list[QuarantinedRow] = []
    for index, raw in enumerate(frame.to_dict("records"), start=1):
        row = {str(k): (None if _is_missing(v) else v) for k, v in raw.items()}
        institution = str(row.get(institution_column, "")) if institution_column else ""
        problems = [
            QuarantinedRow(source, index, institution, column, "", missing_reason)
            for column in required_columns
            if row.get(column) is None
        ]
        if not problems:
            try:
                records.append(model.model_validate(row))
                row_numbers.append(index)
                continue
            except ValidationError as error:
                problems = [
                    QuarantinedRow(
                        source,
                        index,
                        institution,
                        ".".join(str(part) for part in issue["loc"]),
                        "" if issue.get("input") is None else str(issue.get("input")),
                        issue["msg"],
                    )
                    for issue in error.errors()
                ]
        quarantined.extend(problems)
    return ValidationOutcome(records, row_numbers, quarantined)


def write_quarantine(path: Path, rows: Iterable[QuarantinedRow]) -> int:
    """Write quarantine entries to a CSV file (overwriting it); return how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=QUARANTINE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
            count += 1
    return count
