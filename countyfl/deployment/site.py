"""An institution's ``site.toml``: who it is, its data export, privacy budget, keys, approved tasks.

A site.toml is written by the institution's IT staff, never by the county. Example::

    institution_id = "township-3"
    name = "Township 3 health centre"
    level = "township"
    # state_dir = "site-state"   # ledger, quarantine, refusals; default: "<stem>-state"

    [data]
    path = "exports/heart.csv"
    schema = "heart-disease"
    [data.columns]              # common-schema field -> the export's column (default: UCI's)
    cholesterol = "chol_mg_dl"

    [privacy]
    budget_epsilon = 8.0        # over every round of every run, for good
    delta = 0.001

    [keys]
    he_secret_context = "keys/institutions-secret.ckks"
    node_private_key = "keys/township-3.key"
    root_certificate = "keys/ca.pem"

    [[approved_tasks]]          # appended by `countyfl node approve`
    sha256 = "..."
    name = "diagnosis-logreg on fed-heart-disease, 15 rounds, DP epsilon 1 per run"
    approved_by = "li.wei"
    approved_at = 2026-03-01T09:30:00Z

Relative paths resolve against the folder of the site.toml.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from countyfl.clinical.adapters import ExportSource
from countyfl.clinical.fhir import FhirOptions
from countyfl.clinical.mapping import DataMapping
from countyfl.clinical.task import TaskDefinition, load_task
from countyfl.data.federated import CareLevel
from countyfl.data.schema import HeartDiseaseRecord
from countyfl.errors import ConfigError
from countyfl.privacy.ledger import LEDGER_FILE, Budget

QUARANTINE_FILE = "quarantine.csv"
REFUSALS_FILE = "refusals.jsonl"
STATE_DIR_SUFFIX = "-state"
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_BASE_DIR = "base_dir"


class SiteConfigError(ConfigError):
    """A site.toml is missing, not TOML, or has a wrong field."""


class DataSchemaName(StrEnum):
    """Common schemas a site's export can be mapped onto."""

    HEART_DISEASE = "heart-disease"


def _resolve(value: Path, info: ValidationInfo) -> Path:
    # Paths in a site.toml mean "relative to this file", not to wherever the node started.
    value = value.expanduser()
    base = (info.context or {}).get(_BASE_DIR)
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


SitePath = Annotated[Path, AfterValidator(_resolve)]
Column = Annotated[str, Field(min_length=1)]


def _uci(field: str) -> Any:
    alias = HeartDiseaseRecord.model_fields[field].alias
    return Field(default=alias or field, min_length=1)


class HeartDiseaseColumns(BaseModel):
    """Which column of the export holds each field of the heart-disease schema.

    Keys are the common schema's field names (:class:`~countyfl.data.schema.HeartDiseaseRecord`);
    values are the export's column names, by default those of UCI's ``heart_disease_uci.csv``.
    Columns of the export that are not named here are never read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    age: str = _uci("age")
    sex: str = _uci("sex")
    chest_pain: str = _uci("chest_pain")
    resting_bp: str = _uci("resting_bp")
    cholesterol: str = _uci("cholesterol")
    fasting_blood_sugar_high: str = _uci("fasting_blood_sugar_high")
    resting_ecg: str = _uci("resting_ecg")
    max_heart_rate: str = _uci("max_heart_rate")
    exercise_angina: str = _uci("exercise_angina")
    st_depression: str = _uci("st_depression")
    diagnosis: str = _uci("diagnosis")

    @model_validator(mode="after")
    def _distinct(self) -> HeartDiseaseColumns:
        seen: dict[str, str] = {}
        for field, column in self.model_dump().items():
            if column in seen:
                raise ValueError(
                    f"fields {seen[column]!r} and {field!r} both name column {column!r}; "
                    "every field needs its own column"
                )
            seen[column] = field
        return self


class HeartDiseaseData(BaseModel):
    """``[data]`` of a site whose export follows the heart-disease schema."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    path: SitePath
    # A field called "schema" would shadow a BaseModel method; the TOML key is "schema".
    data_schema: Literal["heart-disease"] = Field(alias="schema")
    columns: HeartDiseaseColumns = HeartDiseaseColumns()

    @property
    def source_description(self) -> str:
        return str(self.path)


class TaskData(DataMapping):
    """``[data]`` of a site whose export is mapped onto a county's task file.

    ``task`` names the task file; the export is a CSV or Excel file (``path``) or a SQL
    query (``url``, ``query``); every other key is the mapping of
    :class:`countyfl.clinical.mapping.DataMapping` (docs/site-data.md). The task file is
    read and the mapping's units checked when the site.toml is loaded, so a bad unit
    stops ``node check`` before anything trains.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: SitePath
    format: Literal["csv", "excel", "sql", "fhir"] = "csv"
    path: SitePath | None = None
    sheet: str | None = Field(default=None, min_length=1, max_length=100)
    delimiter: Literal[",", ";", "\t", "|"] = ","
    encoding: Literal["utf-8", "utf-8-sig", "gb18030", "latin-1"] = "utf-8"
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    query: str | None = Field(default=None, min_length=1, max_length=20_000)
    fhir: FhirOptions | None = None

    _definition: TaskDefinition | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_task(self) -> TaskData:
        self.export_source()  # format and its keys fit together
        self._definition = load_task(self.task)
        return self

    @property
    def definition(self) -> TaskDefinition:
        if self._definition is None:  # pragma: no cover - set by validation
            self._definition = load_task(self.task)
        return self._definition

    @property
    def data_schema(self) -> str:
        return self.definition.schema_name

    def export_source(self) -> ExportSource:
        return ExportSource(
            format=self.format,
            path=self.path,
            sheet=self.sheet,
            delimiter=self.delimiter,
            encoding=self.encoding,
            url=self.url,
            query=self.query,
            fhir=self.fhir,
        )

    def mapping(self) -> DataMapping:
        return DataMapping.model_validate(
            {name: getattr(self, name) for name in DataMapping.model_fields}
        )

    @property
    def source_description(self) -> str:
        return self.export_source().describe()


def _data_kind(value: Any) -> str:
    return "task" if isinstance(value, Mapping) and "task" in value else "heart-disease"


# A [data] table with a `task` key maps the export onto a county's task file; otherwise it
# is the built-in heart-disease schema.
DataSource = Annotated[
    Annotated[HeartDiseaseData, Tag("heart-disease")] | Annotated[TaskData, Tag("task")],
    Discriminator(_data_kind),
]


class PrivacySettings(BaseModel):
    """``[privacy]``: the institution's total (epsilon, delta) budget over all runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget_epsilon: float = Field(gt=0, le=1000)
    delta: float = Field(gt=0, lt=1)


class KeyPaths(BaseModel):
    """``[keys]``: where the site keeps its key files (never the keys themselves)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    he_secret_context: SitePath | None = Field(
        default=None, description="institutions' CKKS secret context (countyfl keys init)"
    )
    node_private_key: SitePath | None = Field(
        default=None, description="SuperNode authentication key (countyfl certs add-node)"
    )
    root_certificate: SitePath | None = Field(
        default=None, description="the county CA certificate (countyfl certs init)"
    )


class ApprovedTask(BaseModel):
    """One ``[[approved_tasks]]`` entry: a task manifest hash the institution agreed to run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=SHA256_PATTERN)
    name: str = Field(min_length=1)
    approved_by: str = Field(min_length=1)
    approved_at: datetime


class SiteConfig(BaseModel):
    """An institution's site.toml, validated; build it with :func:`load_site`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    institution_id: str = Field(pattern=SLUG_PATTERN, max_length=64)
    name: str = Field(min_length=1)
    level: CareLevel
    township: str = Field(default="", pattern=r"^(?:[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)?$")
    """The township the institution belongs to (e.g. "township-3"); empty for none."""
    data: DataSource
    privacy: PrivacySettings
    keys: KeyPaths = KeyPaths()
    state_dir: SitePath
    approved_tasks: tuple[ApprovedTask, ...] = ()

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The site.toml this configuration was loaded from (None if built in code)."""
        return self._source

    @property
    def budget(self) -> Budget:
        return Budget(self.privacy.budget_epsilon, self.privacy.delta)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / LEDGER_FILE

    @property
    def quarantine_path(self) -> Path:
        return self.state_dir / QUARANTINE_FILE

    @property
    def refusals_path(self) -> Path:
        return self.state_dir / REFUSALS_FILE

    @property
    def approved_hashes(self) -> frozenset[str]:
        return frozenset(task.sha256 for task in self.approved_tasks)

    def key_files(self) -> dict[str, Path | None]:
        """``keys.<field>`` -> configured path (None where the site sets none)."""
        return {f"keys.{field}": getattr(self.keys, field) for field in KeyPaths.model_fields}


def _location(loc: tuple[int | str, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "data" and loc[1] in ("task", "heart-disease"):
        loc = (loc[0], *loc[2:]) if len(loc) > 2 or loc[1] != "task" else loc
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _message(issue: Mapping[str, Any]) -> str:
    if issue["type"] == "extra_forbidden":
        return "unknown field (check its spelling against the site.toml reference)"
    if issue["type"] == "missing":
        return "required field is missing"
    if issue["type"] == "string_pattern_mismatch" and issue["loc"] == ("institution_id",):
        return (
            "must be a slug: lowercase letters, digits and inner hyphens, up to 64 characters "
            "(e.g. 'township-3')"
        )
    return str(issue["msg"]).removeprefix("Value error, ")


def parse_site(raw: Mapping[str, Any], *, source: Path) -> SiteConfig:
    """Validate a parsed site.toml mapping; relative paths resolve against ``source``'s folder.

    Raises
    ------
    SiteConfigError
        Naming ``source`` and every wrong field, e.g.
        ``site.toml: privacy.budget_epsilon: Input should be greater than 0``.
    """
    data = dict(raw)
    data.setdefault("state_dir", f"{source.stem}{STATE_DIR_SUFFIX}")
    try:
        site = SiteConfig.model_validate(data, context={_BASE_DIR: source.parent})
    except ValidationError as error:
        problems = "\n".join(
            f"{source}: {_location(tuple(issue['loc']))}: {_message(issue)}"
            for issue in error.errors()
        )
        raise SiteConfigError(
            f"{problems}\nFix {source.name} and run `countyfl node check --site {source}`."
        ) from None
    site._source = source
    return site


def load_site(path: Path, *, require_data: bool = True) -> SiteConfig:
    """Read and validate a site.toml.

    Parameters
    ----------
    path : pathlib.Path
        The site.toml.
    require_data : bool
        Also require the data export (``data.path``) to exist.

    Returns
    -------
    SiteConfig
        The validated, frozen configuration with absolute-or-resolved paths.

    Raises
    ------
    SiteConfigError
        The file is missing or not TOML (with line and column), a field is wrong or
        unknown (naming the file and the field), or the data export is missing.
    """
    if not path.is_file():
        raise SiteConfigError(
            f"{path}: site configuration not found; write one (see "
            "countyfl.deployment.site for the layout) and pass it with --site"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise SiteConfigError(f"{path}: not valid TOML: {error}. Fix the syntax there.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SiteConfigError(f"{path}: cannot be read ({error})") from None
    site = parse_site(raw, source=path)
    if require_data and site.data.path is not None and not site.data.path.is_file():
        raise SiteConfigError(
            f"{path}: data.path: {site.data.path} does not exist; point data.path at the "
            "institution's CSV export (relative paths are relative to the site.toml)"
        )
    return site


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string.

    JSON's escapes are all valid in TOML and JSON escapes every control character TOML
    forbids except DEL (U+007F), which is escaped here.
    """
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def render_site_toml(
    *,
    institution_id: str,
    name: str,
    level: CareLevel | str,
    data_path: Path | str,
    budget_epsilon: float,
    delta: float,
    columns: Mapping[str, str] | None = None,
    he_secret_context: Path | str | None = None,
    node_private_key: Path | str | None = None,
    root_certificate: Path | str | None = None,
    state_dir: Path | str | None = None,
) -> str:
    """The text of a site.toml with these settings (for set-up scripts and tests).

    The result is checked with the same validation as :func:`load_site` (without
    resolving paths), so a bad value fails here rather than when the node starts.
    """
    lines = [
        f"institution_id = {toml_string(institution_id)}",
        f"name = {toml_string(name)}",
        f"level = {toml_string(str(level))}",
    ]
    if state_dir is not None:
        lines.append(f"state_dir = {toml_string(str(state_dir))}")
    lines += [
        "",
        "[data]",
        f"path = {toml_string(str(data_path))}",
        f"schema = {toml_string(DataSchemaName.HEART_DISEASE.value)}",
    ]
    if columns:
        lines += ["", "[data.columns]"]
        lines += [f"{field} = {toml_string(column)}" for field, column in columns.items()]
    lines += [
        "",
        "[privacy]",
        f"budget_epsilon = {float(budget_epsilon)!r}",
        f"delta = {float(delta)!r}",
    ]
    keys = {
        "he_secret_context": he_secret_context,
        "node_private_key": node_private_key,
        "root_certificate": root_certificate,
    }
    if any(value is not None for value in keys.values()):
        lines += ["", "[keys]"]
        lines += [
            f"{field} = {toml_string(str(value))}"
            for field, value in keys.items()
            if value is not None
        ]
    text = "\n".join(lines) + "\n"
    parse_site(tomllib.loads(text), source=Path("site.toml"))
    return text
