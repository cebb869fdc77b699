"""Referral rules and the doctor directory: TOML files a county edits, validated on load.

Both files are parsed into frozen pydantic models with kebab-case keys. Every mistake is
reported as ``FILE: [[symptoms]] entry 3 (code 'chest-pain'), field 'levels.severe': ...``
so that whoever edits the file can find it. Nothing here imports FastAPI.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from countyfl.clinical.task import TaskDefinition, TaskFileError, load_task
from countyfl.data.federated import CareLevel
from countyfl.naming import kebab_case
from countyfl.registry.schemas import NAME_PATTERN, InputSchema
from countyfl.serving.errors import ReferralConfigError

CODE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
TaskPath = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f]+$")]
"""A task file's path in the rules: no control characters."""
"""Symptom codes, specialties and ids: lowercase kebab-case, e.g. ``chest-pain``."""
DEFAULT_RULES_FILE = "referral-rules.toml"
DEFAULT_DIRECTORY_FILE = "doctor-directory.toml"
DEFAULT_MODEL_KEY = "default"

LEVEL_RANK: Mapping[CareLevel, int] = {
    CareLevel.VILLAGE: 0,
    CareLevel.TOWNSHIP: 1,
    CareLevel.COUNTY: 2,
}
"""Levels of care, lowest first."""


class Severity(StrEnum):
    """How severe a reported symptom is."""

    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


SEVERITY_RANK: Mapping[Severity, int] = {Severity.MILD: 0, Severity.MODERATE: 1, Severity.SEVERE: 2}


class Urgency(StrEnum):
    """How soon the patient should be seen at the recommended level."""

    ROUTINE = "routine"
    """Within weeks."""
    SOON = "soon"
    """Within days."""
    URGENT = "urgent"
    """Today."""
    EMERGENCY = "emergency"
    """Now, with transport."""


URGENCY_ORDER: Sequence[Urgency] = (
    Urgency.ROUTINE,
    Urgency.SOON,
    Urgency.URGENT,
    Urgency.EMERGENCY,
)

RiskBand = Literal["low", "moderate", "high"]

Code = Annotated[str, Field(pattern=CODE_PATTERN)]
Label = Annotated[str, Field(min_length=1, max_length=200)]
Probability = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class _Config(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=kebab_case,
        validate_by_name=True,
        validate_by_alias=True,
    )


# -- referral rules ----------------------------------------------------------------------


class SymptomRule(_Config):
    """What one symptom asks for at each severity."""

    code: Code
    label: Label
    specialty: Code
    weight: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 1.0
    levels: dict[Severity, CareLevel]
    red_flag_from: Severity | None = None
    """From this severity on, the symptom is a red flag: county hospital, emergency."""

    @model_validator(mode="after")
    def _every_severity(self) -> SymptomRule:
        missing = [s.value for s in Severity if s not in self.levels]
        if missing:
            raise ValueError(f"levels has no level for {', '.join(missing)}; give all three")
        ranks = [LEVEL_RANK[self.levels[s]] for s in Severity]
        if ranks != sorted(ranks):
            raise ValueError("levels must not fall as the severity rises")
        return self


class PopulationRule(_Config):
    """A special population: the level it needs at least, urgency steps, its specialty."""

    label: Label
    min_level: CareLevel
    urgency_steps: Annotated[int, Field(ge=0, le=3)] = 0
    preferred_specialty: Code | None = None


class ChildRule(PopulationRule):
    """Young children: younger than ``below_age_years``."""

    below_age_years: Annotated[float, Field(gt=0, le=18)]


class ElderlyRule(PopulationRule):
    """The elderly: ``from_age_years`` or older."""

    from_age_years: Annotated[float, Field(ge=40, le=120)]


class Populations(_Config):
    """The special populations the rules give priority to."""

    pregnant: PopulationRule
    young_child: ChildRule
    elderly: ElderlyRule


class RiskBands(_Config):
    """Probability cut-offs: at or above ``moderate`` is moderate, at or above ``high`` high."""

    moderate: Probability
    high: Probability

    @model_validator(mode="after")
    def _ordered(self) -> RiskBands:
        if not self.moderate < self.high:
            raise ValueError(
                f"the moderate cut-off {self.moderate} must be below the high one {self.high}"
            )
        return self


class ModelRiskRule(_Config):
    """A model's risk bands, the specialty its risk calls for, and the records it reads.

    ``schema`` (the input schema of ``countyfl.registry.schemas.InputSchema``) or ``task``
    (a county's task file) makes the API serve the model: it gets its own
    ``POST /v1/models/NAME/predict`` route whose body is that schema's or task's patient
    records. The ``default`` entry has neither.
    """

    bands: RiskBands
    specialty: Code | None = None
    input_schema: Literal["heart-disease", "framingham"] | None = Field(
        default=None, alias="schema"
    )
    task: TaskPath | None = None
    """A county's task file (relative to the rules file's folder): the model is served with
    the task's own patient record (its features, units, ranges and categories)."""

    @model_validator(mode="after")
    def _one_input(self) -> ModelRiskRule:
        if self.input_schema is not None and self.task is not None:
            raise ValueError(
                "give either schema (a built-in input schema) or task (a county's task "
                "file), not both"
            )
        return self


class RiskLevelRule(_Config):
    """The minimum level and urgency of a risk band."""

    min_level: CareLevel
    urgency: Urgency


class Escalation(_Config):
    """Symptom burden (sum of weight x severity weight) at which the level rises."""

    township_score: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    county_score: Annotated[float, Field(gt=0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _ordered(self) -> Escalation:
        if not self.township_score < self.county_score:
            raise ValueError(
                f"township-score {self.township_score} must be below county-score "
                f"{self.county_score}"
            )
        return self


class Fallback(_Config):
    """What to tell the clinician when no doctor matches."""

    message: Label
    contact: Label


class ReferralRules(_Config):
    """The whole rules file (see ``countyfl/serving/defaults/referral-rules.toml``)."""

    version: Literal[1] = 1
    default_specialty: Code
    severity_weights: dict[Severity, Annotated[float, Field(gt=0, allow_inf_nan=False)]]
    urgency_by_severity: dict[Severity, Urgency]
    escalation: Escalation
    populations: Populations
    models: dict[str, ModelRiskRule]
    risk_levels: dict[Literal["moderate", "high"], RiskLevelRule]
    fallback: Fallback
    symptoms: Annotated[list[SymptomRule], Field(min_length=1)]
    _tasks: dict[str, TaskDefinition] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> ReferralRules:
        for table, mapping in (
            ("severity-weights", self.severity_weights),
            ("urgency-by-severity", self.urgency_by_severity),
        ):
            missing = [s.value for s in Severity if s not in mapping]
            if missing:
                raise ValueError(f"[{table}] has no value for {', '.join(missing)}")
        missing_bands = [band for band in ("moderate", "high") if band not in self.risk_levels]
        if missing_bands:
            raise ValueError(f"[risk-levels] has no entry for {', '.join(missing_bands)}")
        if DEFAULT_MODEL_KEY not in self.models:
            raise ValueError(f"[models] needs a [models.{DEFAULT_MODEL_KEY}] entry")
        default = self.models[DEFAULT_MODEL_KEY]
        if default.input_schema is not None or default.task is not None:
            raise ValueError(
                f"[models.{DEFAULT_MODEL_KEY}] gives only bands and a specialty, no schema or "
                "task: "
                "a model is served only under its own name"
            )
        for name in self.models:
            if name != DEFAULT_MODEL_KEY and not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(
                    f"[models.{name}]: {name!r} is not a registry model name (lowercase "
                    "letters, digits, '.', '_', '-')"
                )
        seen: set[str] = set()
        for number, symptom in enumerate(self.symptoms, start=1):
            if symptom.code in seen:
                raise ValueError(
                    f"[[symptoms]] entry {number} repeats the code {symptom.code!r}; each "
                    "symptom code appears once"
                )
            seen.add(symptom.code)
        return self

    def symptom(self, code: str) -> SymptomRule:
        """The rule of symptom ``code``.

        Raises
        ------
        KeyError
            If the rules do not know the code.
        """
        for rule in self.symptoms:
            if rule.code == code:
                return rule
        raise KeyError(code)

    @property
    def symptom_codes(self) -> list[str]:
        """Every symptom code the rules know, in file order."""
        return [rule.code for rule in self.symptoms]

    def model_rule(self, model_name: str) -> ModelRiskRule:
        """The risk rule of ``model_name`` (the ``default`` entry for unlisted models)."""
        return self.models.get(model_name, self.models[DEFAULT_MODEL_KEY])

    @property
    def served_models(self) -> dict[str, InputSchema | TaskDefinition]:
        """The models the API serves (those with a ``schema`` or a ``task``), by name, in
        file order: the built-in schema's name, or the task file's definition."""
        served: dict[str, InputSchema | TaskDefinition] = {}
        for name, rule in self.models.items():
            if rule.input_schema is not None:
                served[name] = rule.input_schema
            elif rule.task is not None:
                if name not in self._tasks:
                    raise ReferralConfigError(
                        f"[models.{name}] names the task file {rule.task!r}, which was not "
                        "read: load the rules with load_rules(path)"
                    )
                served[name] = self._tasks[name]
        return served

    def with_tasks(self, folder: Path, *, source: Path) -> ReferralRules:
        """These rules with every ``task`` file (relative to ``folder``) read and validated.

        Raises
        ------
        ReferralConfigError
            Naming the rules file, the model entry and the task file's own problem.
        """
        tasks: dict[str, TaskDefinition] = {}
        for name, rule in self.models.items():
            if rule.task is None:
                continue
            path = Path(rule.task)
            path = path if path.is_absolute() else folder / path
            try:
                tasks[name] = load_task(path)
            except TaskFileError as error:
                raise ReferralConfigError(
                    f"{source}: [models.{name}], field 'task': the task file cannot be used: "
                    f"{error}"
                ) from None
        self._tasks = tasks
        return self


# -- doctor directory --------------------------------------------------------------------


class Institution(_Config):
    """An institution of the county medical community."""

    id: Code
    name: Label
    level: CareLevel
    township: Label | None = None
    """The township it belongs to (a village clinic's, a township health centre's own), as
    the county's administrative record says; none for the county's own hospitals."""


class Doctor(_Config):
    """A doctor who can take referrals."""

    id: Code
    name: Label
    institution: Code
    skills: Annotated[list[Code], Field(min_length=1)]
    current_load: Annotated[int, Field(ge=0)]
    capacity: Annotated[int, Field(ge=1)]
    accepting_patients: bool = True


class DoctorDirectory(_Config):
    """The whole directory file (see ``countyfl/serving/defaults/doctor-directory.toml``)."""

    institutions: Annotated[list[Institution], Field(min_length=1)]
    doctors: list[Doctor]

    @model_validator(mode="after")
    def _references(self) -> DoctorDirectory:
        known: set[str] = set()
        for number, institution in enumerate(self.institutions, start=1):
            if institution.id in known:
                raise ValueError(
                    f"[[institutions]] entry {number} repeats the id {institution.id!r}"
                )
            known.add(institution.id)
        doctors: set[str] = set()
        for number, doctor in enumerate(self.doctors, start=1):
            if doctor.id in doctors:
                raise ValueError(f"[[doctors]] entry {number} repeats the id {doctor.id!r}")
            doctors.add(doctor.id)
            if doctor.institution not in known:
                raise ValueError(
                    f"[[doctors]] entry {number} (id {doctor.id!r}), field 'institution': "
                    f"{doctor.institution!r} is not an id of [[institutions]] "
                    f"({', '.join(sorted(known))})"
                )
        return self

    def institution(self, institution_id: str) -> Institution:
        """The institution with ``institution_id`` (it exists: the directory checked)."""
        return next(item for item in self.institutions if item.id == institution_id)

    def level_of(self, doctor: Doctor) -> CareLevel:
        """The level of care of the doctor's institution."""
        return self.institution(doctor.institution).level


# -- loading -----------------------------------------------------------------------------

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def default_path(filename: str) -> Path:
    """A file of the packaged defaults (``countyfl/serving/defaults``)."""
    return Path(str(resources.files("countyfl.serving") / "defaults" / filename))


def load_rules(path: Path | None = None) -> ReferralRules:
    """Read and validate a referral rules file (the packaged defaults without a path).

    Raises
    ------
    ReferralConfigError
        If the file is missing, not TOML, or breaks the rules (naming entry and field).
    """
    path = path or default_path(DEFAULT_RULES_FILE)
    rules = _load(path, ReferralRules, "referral rules")
    return rules.with_tasks(path.parent, source=path)


def load_directory(path: Path | None = None) -> DoctorDirectory:
    """Read and validate a doctor directory file (the packaged example without a path).

    Raises
    ------
    ReferralConfigError
        If the file is missing, not TOML, or an entry is invalid (naming entry and field).
    """
    return _load(path or default_path(DEFAULT_DIRECTORY_FILE), DoctorDirectory, "doctor directory")


def _load(path: Path, model: type[ConfigT], what: str) -> ConfigT:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReferralConfigError(
            f"the {what} file {path} does not exist; fix the path in the settings "
            "(COUNTYFL_REFERRAL_RULES_FILE / COUNTYFL_DOCTOR_DIRECTORY_FILE) or unset it to "
            "use the packaged defaults"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReferralConfigError(f"the {what} file {path} cannot be read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ReferralConfigError(f"{path}: not valid TOML ({error}); fix the syntax") from None
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(_describe(item, raw) for item in error.errors(include_url=False))
        raise ReferralConfigError(f"{path}: {problems}") from None


def _describe(item: Mapping[str, Any], raw: Mapping[str, Any]) -> str:
    """One pydantic error as ``[[table]] entry N (id 'x'), field 'a.b': message``."""
    location = list(item["loc"])
    message = str(item["msg"]).removeprefix("Value error, ")
    where: list[str] = []
    node: Any = raw
    path: list[str] = []
    index = 0
    while index < len(location):
        part = location[index]
        following = location[index + 1] if index + 1 < len(location) else None
        if isinstance(part, str) and isinstance(following, int):
            entry = _child(_child(node, part), following)
            label = f"[[{part}]] entry {following + 1}"
            name = _identifier(entry)
            where.append(f"{label} ({name})" if name else label)
            node, path, index = entry, [], index + 2
            continue
        path.append(str(part))
        node = _child(node, part)
        index += 1
    if path:
        where.append(f"field {'.'.join(path)!r}")
    return f"{', '.join(where)}: {message}" if where else message


def _child(node: Any, key: str | int) -> Any:
    if isinstance(node, Mapping) and isinstance(key, str):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return None


def _identifier(entry: Any) -> str:
    if isinstance(entry, Mapping):
        for key in ("id", "code"):
            if isinstance(entry.get(key), str):
                return f"{key} {entry[key]!r}"
    return ""
