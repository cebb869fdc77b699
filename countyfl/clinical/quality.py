"""Data quality of a site's export: per feature, what mapping found, kept and changed.

:func:`quality_report` summarises :class:`~countyfl.clinical.mapping.MappedRows` for the
site's operator (``countyfl node check`` shows it as a table, exact counts): per feature
the share of rows read whose cell is missing, out of range or invalid, the cells whose
unit was converted or code recoded, and the distribution of the kept rows' values
(quartiles and mean of numbers, counts of categories and yes/no; filled values excluded).

:func:`shared_quality` is what the site may send the county, only when its operator asks
for it (``node check --share FILE``): aggregates only, with small counts suppressed.

* A count under :data:`MIN_COUNT` (5), zero included, is written ``"<5"``.
* Counts that add up to a total the file shows are suppressed further ("suppressed")
  until the suppressed ones add up to at least 5 together, so no small count can be
  recovered by subtraction within the group (a part the file does not show, such as a
  feature's valid unchanged cells, takes part as a suppressed cell); a group whose total
  is suppressed is suppressed whole. The groups: rows read = kept + quarantined; per
  feature, rows read = missing + out of range + invalid + converted + recoded + the
  rest; kept rows = a number's values + filled ones, or a category's levels (+ filled),
  or the label's positives + negatives. Sums across groups (a row quarantined for two
  features) are not protected; the file says nothing per row.
* A share derived from a suppressed count is ``"suppressed"``.
* Mean and quartiles only over at least :data:`MIN_DISTRIBUTION_COUNT` values, rounded
  to 3 significant digits; no minimum or maximum (one row's value), no pseudonym, no
  identifier, no single row's value.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from countyfl.clinical.mapping import MappedRows
from countyfl.clinical.task import FeatureType, TaskDefinition

MIN_COUNT = 5
MIN_DISTRIBUTION_COUNT = 10
SMALL = "<5"
SUPPRESSED = "suppressed"
SHARED_FORMAT = "countyfl-site-quality/1"
_REST = "\x00rest"


@dataclass(frozen=True)
class FeatureQuality:
    """One feature's (or the label's) quality at the site, exact (for the site only)."""

    name: str
    kind: str
    """number, yes-no, category or label."""
    unit: str | None
    missing: int
    out_of_range: int
    invalid: int
    converted: int
    recoded: int
    filled: int
    observed: int
    """Kept rows with a value of their own (not filled)."""
    quartiles: tuple[float, float, float] | None = None
    mean: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """Level -> kept rows (categories, yes/no, the label)."""


@dataclass(frozen=True)
class QualityReport:
    """A site's data quality for one task (exact counts: for the site's operator)."""

    task: str
    institution: str
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    features: tuple[FeatureQuality, ...]
    conversions: dict[str, str]


def quality_report(task: TaskDefinition, rows: MappedRows, *, institution: str) -> QualityReport:
    """The quality of ``rows`` (from :func:`~countyfl.clinical.mapping.map_rows`)."""
    features = []
    for feature in task.features:
        tally = rows.tallies.get(feature.name)
        if tally is None:
            continue
        quartiles: tuple[float, float, float] | None = None
        mean = None
        counts: dict[str, int] = {}
        if feature.type is FeatureType.NUMBER:
            numbers = [float(v) for v in tally.observed]
            if numbers:
                mean = statistics.fmean(numbers)
                if len(numbers) >= 2:
                    q1, q2, q3 = statistics.quantiles(numbers, n=4, method="inclusive")
                    quartiles = (q1, q2, q3)
                else:
                    quartiles = (numbers[0],) * 3
        elif feature.type is FeatureType.YES_NO:
            seen = Counter(tally.observed)
            counts = {"yes": seen.get(1.0, 0), "no": seen.get(0.0, 0)}
        else:
            seen = Counter(tally.observed)
            counts = {level: seen.get(level, 0) for level in feature.categories}
        features.append(
            FeatureQuality(
                feature.name,
                feature.type.value,
                feature.unit,
                tally.missing,
                tally.out_of_range,
                tally.invalid,
                tally.converted,
                tally.recoded,
                tally.filled,
                len(tally.observed),
                quartiles,
                mean,
                counts,
            )
        )
    label = rows.tallies.get(task.label.column)
    if label is not None:
        positives = sum(1 for v in rows.labels if v == 1.0)
        features.append(
            FeatureQuality(
                task.label.column,
                "label",
                None,
                label.missing,
                0,
                label.invalid,
                0,
                label.recoded,
                0,
                len(rows.labels),
                counts={"positive": positives, "negative": len(rows.labels) - positives},
            )
        )
    quarantined = len({q.row_number for q in rows.quarantined if q.row_number > 0})
    return QualityReport(
        task.name,
        institution,
        rows.rows_read,
        len(rows.values),
        quarantined,
        tuple(features),
        dict(rows.conversions),
    )


# -- what the county may see -----------------------------------------------------------


def suppress(
    cells: Mapping[str, int], total: int, *, total_shown: bool = True
) -> dict[str, int | str]:
    """Counts of one group adding up to (at most) ``total``, small ones suppressed.

    A count under :data:`MIN_COUNT` becomes ``"<5"``. The part of ``total`` the cells do
    not cover takes part as a cell never shown. While the suppressed cells add up to
    under :data:`MIN_COUNT` (so their sum, which ``total`` minus the shown ones gives,
    would be a small count) the smallest shown cell is suppressed too ("suppressed").
    Everything is suppressed when ``total`` itself is not shown.
    """
    values = dict(cells)
    rest = total - sum(values.values())
    hidden = {k for k, v in values.items() if v < MIN_COUNT}
    if rest > 0:
        values[_REST] = rest
        hidden.add(_REST)
    if not total_shown:
        hidden = set(values)
    while hidden and len(hidden) < len(values) and sum(values[k] for k in hidden) < MIN_COUNT:
        hidden.add(min((k for k in values if k not in hidden), key=lambda k: (values[k], k)))
    return {
        k: (values[k] if k not in hidden else SMALL if values[k] < MIN_COUNT else SUPPRESSED)
        for k in cells
    }


def _with_shares(counts: Mapping[str, int | str], total: int) -> dict[str, dict[str, Any]]:
    return {
        k: {
            "count": v,
            "share": round(v / total, 3) if isinstance(v, int) and total else SUPPRESSED,
        }
        for k, v in counts.items()
    }


def _rounded(value: float) -> float:
    return float(f"{value:.3g}")


def shared_quality(report: QualityReport) -> dict[str, Any]:
    """The aggregate the site may send the county: small counts suppressed (module doc)."""
    read_shown = report.rows_read >= MIN_COUNT
    rows = suppress(
        {"kept": report.rows_kept, "quarantined": report.rows_quarantined},
        report.rows_read,
        total_shown=read_shown,
    )
    kept_shown = isinstance(rows["kept"], int)
    features: dict[str, Any] = {}
    for feature in report.features:
        # One partition of the rows read: converted and recoded cells are valid ones, so
        # they are suppressed together with the others (the rest: valid, unchanged).
        cells = suppress(
            {
                "missing": feature.missing,
                "out_of_range": feature.out_of_range,
                "invalid": feature.invalid,
                "converted": feature.converted,
                "recoded": feature.recoded,
            },
            report.rows_read,
            total_shown=read_shown,
        )
        entry: dict[str, Any] = {"type": feature.kind}
        if feature.unit is not None:
            entry["unit"] = feature.unit
        entry |= _with_shares(cells, report.rows_read)
        distribution: dict[str, Any]
        if feature.kind == "number":
            count = suppress({"count": feature.observed}, report.rows_kept, total_shown=kept_shown)[
                "count"
            ]
            distribution = {"count": count}
            if (
                isinstance(count, int)
                and count >= MIN_DISTRIBUTION_COUNT
                and feature.mean is not None
                and feature.quartiles is not None
            ):
                distribution["mean"] = _rounded(feature.mean)
                distribution["quartiles"] = [_rounded(q) for q in feature.quartiles]
        else:
            distribution = {
                "counts": suppress(feature.counts, report.rows_kept, total_shown=kept_shown)
            }
        entry["distribution"] = distribution
        features[feature.name] = entry
    return {
        "format": SHARED_FORMAT,
        "task": report.task,
        "institution": report.institution,
        "suppression": {
            "min_count": MIN_COUNT,
            "min_distribution_count": MIN_DISTRIBUTION_COUNT,
            "small": SMALL,
            "suppressed": SUPPRESSED,
        },
        "rows": {"read": report.rows_read if read_shown else SMALL, **rows},
        "features": features,
        "conversions": report.conversions,
    }


# -- what the site's operator sees -----------------------------------------------------

QUALITY_COLUMNS = (
    "feature",
    "missing",
    "out of range",
    "invalid",
    "converted",
    "recoded",
    "distribution (kept rows)",
)


def _part(count: int, total: int) -> str:
    return f"{count} ({count / total:.1%})" if count and total else "0"


def quality_rows(report: QualityReport) -> list[tuple[str, ...]]:
    """The operator's table (exact counts, shares of the rows read), one row per feature."""
    lines: list[tuple[str, ...]] = []
    for feature in report.features:
        if feature.kind == "number":
            if feature.mean is None or feature.quartiles is None:
                distribution = "no values"
            else:
                q1, q2, q3 = feature.quartiles
                distribution = (
                    f"n {feature.observed}, mean {feature.mean:.4g}, "
                    f"quartiles {q1:.4g} / {q2:.4g} / {q3:.4g} {feature.unit or ''}".rstrip()
                )
            if feature.filled:
                distribution += f"; {feature.filled} filled"
        else:
            distribution = ", ".join(f"{k} {v}" for k, v in feature.counts.items())
        name = f"{feature.name} (label)" if feature.kind == "label" else feature.name
        lines.append(
            (
                name,
                _part(feature.missing, report.rows_read),
                _part(feature.out_of_range, report.rows_read),
                _part(feature.invalid, report.rows_read),
                _part(feature.converted, report.rows_read),
                _part(feature.recoded, report.rows_read),
                distribution,
            )
        )
    return lines
