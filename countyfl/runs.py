"""The run folder: what the county's ServerApp writes for one federated run, defined once.

``run.json`` (:class:`RunRecord`: run id, task manifest hash, times, the run config),
``history.json`` (:class:`FederationHistory`: per round, what every institution replied,
metrics only, never weights), ``events.jsonl`` (:class:`RunEvent`: what happens as it
happens, one JSON line each, for ``countyfl run`` to show) and the final model:
``final-model.npz`` in plaintext, or ``final-aggregate.npz``, Enc(sum n w), under CKKS,
which only a key holder can publish (:mod:`countyfl.publishing`). The ServerApp writes
these types; publishing, ``countyfl run``, the simulation runner and the tests read them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from countyfl.errors import CountyflError, describe_validation_error
from countyfl.naming import kebab_case

if TYPE_CHECKING:
    from countyfl.run_config import RunConfig

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
FINAL_MODEL_FILE = "final-model.npz"
FINAL_AGGREGATE_FILE = "final-aggregate.npz"
EVENTS_FILE = "events.jsonl"
CALIBRATION_FILE = "calibration.json"
# Distributed noise: the county's sum of the sites' encrypted calibration sums
CALIBRATION_AGGREGATE_FILE = "calibration-aggregate.ckks"
MAX_EVENT_LINE = 64 * 1024
"""The longest line :class:`EventReader` accepts (an event is a few hundred bytes)."""


class RunFolderError(CountyflError):
    """A run folder's file is missing or is not what the ServerApp writes."""


class RunRecord(BaseModel):
    """``run.json``: which run, which task, when, and its whole run config."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=kebab_case, populate_by_name=True
    )

    run_id: str = ""
    task_manifest_hash: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    num_values: int | None = Field(default=None, ge=0)
    config: dict[str, Any]

    def run_config(self) -> RunConfig:
        """The run config, parsed (ConfigError if it is not a valid one)."""
        from countyfl.run_config import parse_run_config

        return parse_run_config(self.config)

    def write(self, folder: Path) -> Path:
        path = folder / RUN_FILE
        path.write_text(
            json.dumps(self.model_dump(mode="json", by_alias=True), indent=1), encoding="utf-8"
        )
        return path

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        path = folder / RUN_FILE
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise RunFolderError(f"{path} holds no run config under 'config'")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = describe_validation_error(error, whole="file")
            raise RunFolderError(f"{path} is not a run record: {problems}") from None


class CalibrationRecord(BaseModel):
    """``calibration.json``: the intercept shift the county computed after the last round.

    A function of the sites' noisy calibration sums (:mod:`countyfl.privacy.calibration`);
    whoever publishes the model adds ``shift`` to the output's bias. ``skipped`` says why
    no shift was computed (then ``shift`` is 0).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=kebab_case, populate_by_name=True
    )

    method: str = Field(default="intercept", pattern="^intercept$")
    shift: float = Field(default=0.0, ge=-10, le=10, allow_inf_nan=False)
    contributors: int = Field(default=0, ge=0, le=1_000_000)
    positives: float = Field(default=0.0, allow_inf_nan=False)
    risk: float = Field(default=0.0, allow_inf_nan=False)
    spread: float = Field(default=0.0, allow_inf_nan=False)
    rows: float = Field(default=0.0, allow_inf_nan=False)
    skipped: str = Field(default="", max_length=2000)
    # Distributed noise: the sums are in CALIBRATION_AGGREGATE_FILE, encrypted; the key
    # holder who publishes decrypts them and computes the shift (countyfl.publishing).
    encrypted: bool = False

    def write(self, folder: Path) -> Path:
        path = folder / CALIBRATION_FILE
        path.write_text(
            json.dumps(self.model_dump(mode="json", by_alias=True), indent=1), encoding="utf-8"
        )
        return path

    @classmethod
    def read(cls, folder: Path) -> CalibrationRecord | None:
        """The run's calibration, or None if the run has none (RunFolderError if broken)."""
        path = folder / CALIBRATION_FILE
        if not path.exists():
            return None
        try:
            return cls.model_validate(read_json(path))
        except ValidationError as error:
            problems = describe_validation_error(error, whole="file")
            raise RunFolderError(f"{path} is not a calibration record: {problems}") from None


def read_json(path: Path) -> Any:
    """A JSON file of a run folder; RunFolderError says what is missing or broken."""
    if not path.is_file():
        raise RunFolderError(
            f"{path} is missing: is {path.parent} the output folder of a finished run "
            "(it holds run.json, history.json and the final model or aggregate)?"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path} is not valid JSON: {error}") from error


@dataclass
class RoundRecord:
    """What one round produced: per-partition train and evaluation metrics and failures."""

    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # partition id -> institution id, as each reply named itself
    institutions: dict[int, str] = field(default_factory=dict)


@dataclass
class FederationHistory:
    """Every round's :class:`RoundRecord`, keyed by server round (1-based)."""

    rounds: dict[int, RoundRecord] = field(default_factory=dict)

    def round(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord())

    def to_dict(self) -> dict[str, Any]:
        return {str(r): asdict(record) for r, record in sorted(self.rounds.items())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FederationHistory:
        history = cls()
        for key, record in data.items():
            history.rounds[int(key)] = RoundRecord(
                train={int(k): v for k, v in record["train"].items()},
                evaluate={int(k): v for k, v in record["evaluate"].items()},
                failures=list(record["failures"]),
                institutions={int(k): v for k, v in record.get("institutions", {}).items()},
            )
        return history

    def institution_names(self) -> dict[int, str]:
        """Partition id -> institution id over all rounds (what the replies said)."""
        names: dict[int, str] = {}
        for record in self.rounds.values():
            names.update(record.institutions)
        return names

    def write(self, path: Path) -> None:
        """Write ``path`` atomically: a reader sees the old history or the new, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True), encoding="utf-8")
        os.replace(partial, path)

    @classmethod
    def read(cls, path: Path) -> FederationHistory:
        """``history.json``; RunFolderError if it is missing or not a history."""
        data = read_json(path)
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RunFolderError(f"{path} is not a run history: {error!r}") from None


class EventKind(StrEnum):
    """What a line of ``events.jsonl`` reports."""

    NODES = "nodes"  # connected nodes against the number needed (when it changes)
    ROUND_START = "round-start"  # a phase of a round asked ``asked`` nodes
    REPLY = "reply"  # a node's reply arrived (``reason``: its error, if it is one)
    RESULT = "result"  # a reply was used (``accepted``) or not, and why
    ROUND_END = "round-end"  # a round is over: counts, failures, mean evaluation metrics
    FAILED = "failed"  # the ServerApp stopped the run: ``reason`` says why and what to do
    FINISHED = "finished"  # every round is done and the run folder is written


class RunEvent(BaseModel):
    """One line of ``events.jsonl``: metrics, node ids and institution ids, never data."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=kebab_case, populate_by_name=True
    )

    kind: EventKind
    run_id: str = ""
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    round: int | None = None
    rounds: int | None = None
    phase: str | None = None
    node: int | None = None
    institution: str | None = None
    accepted: bool | None = None
    reason: str = ""
    connected: int | None = None
    needed: int | None = None
    wait_seconds: float | None = None  # how long the ServerApp waits for them
    asked: int | None = None
    trained: int | None = None
    evaluated: int | None = None
    failures: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)


class EventLog:
    """Appends :class:`RunEvent` lines to ``events.jsonl`` (one writer: the ServerApp).

    Each event is one ``write`` of one whole line, flushed at once, so that a reader
    following the file sees complete lines, in order, as they happen.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: RunEvent) -> None:
        line = json.dumps(event.model_dump(mode="json", by_alias=True, exclude_defaults=True))
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()


class EventReader:
    """Reads the events appended to ``events.jsonl`` since the last call (see EventLog).

    ``skip_existing``: start after what the file holds now (the events of earlier runs
    written to the same folder).
    """

    def __init__(self, path: Path, *, skip_existing: bool = False) -> None:
        self.path = path
        existing = path.read_bytes() if skip_existing and path.is_file() else b""
        self._offset = len(existing)
        self._line = existing.count(b"\n")  # so that an error names the file's own line

    def read_new(self) -> list[RunEvent]:
        """Complete new lines as events; a half-written last line waits for the next call."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) > MAX_EVENT_LINE:
                raise RunFolderError(f"{self.path}: line {self._line + 1} is not an event")
            return []
        self._offset += end + 1
        events = []
        for raw in chunk[:end].split(b"\n"):
            self._line += 1
            try:
                events.append(RunEvent.model_validate_json(raw))
            except ValidationError as error:
                problems = describe_validation_error(error, whole="line")
                raise RunFolderError(
                    f"{self.path}: line {self._line} is not a run event: {problems}"
                ) from None
        return events
