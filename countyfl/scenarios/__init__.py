"""Scenarios: the one place a clinical task on a federated data set is defined.

A :class:`Scenario` holds everything every layer needs to know about a task and its
data: the common data schema and the model's input features, how to load and partition
the data, the model's input transform (what the API applies to a patient record), the
run-config defaults, the name its models get in the registry, and the published numbers
it is compared with. The ClientApp loads its institution's data through :func:`load`,
the ServerApp sizes the model from :attr:`Scenario.num_features`, the task manifest
takes the schema and features, publishing the input transform and registry name, and
the simulation runner the defaults and reference numbers.

A scenario is built from a task file (:mod:`countyfl.clinical.task`) by
:func:`from_task`: the two built-in ones are ``tasks/*.toml`` in this package, and
:func:`get` also accepts the path of a county's own task file (``….toml``), so every
process of a simulation (Ray's actors included) resolves the same name to the same task.
Adding a built-in scenario is one task file in ``tasks/`` and one line in
:data:`_BUILT_IN`; docs/architecture.md lists what a scenario must provide.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from countyfl.errors import UnknownNameError

if TYPE_CHECKING:
    from countyfl.clinical.task import TaskDefinition
    from countyfl.data.federated import FederatedDataset

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TASK_FILE_SUFFIX = ".toml"
INLINE_TASK_PREFIX = "task:"
"""A run config's ``scenario`` that carries a county's task itself (:func:`portable_key`)."""
MAX_INLINE_TASK_BYTES = 1_000_000

InputTransform = dict[str, Any]
"""``{"schema", "names", "mean", "scale"}``: a record of ``schema`` encoded into ``names``
and scaled as ``(raw - mean) / scale`` (the ``features`` block of ``model.json``)."""

DataLoader = Callable[[Path | None, int], "FederatedDataset"]
"""(data file or None for the packaged copy, partition seed) -> the federated data set."""


@dataclass(frozen=True)
class Scenario:
    """A clinical task on a federated data set (see the module docstring)."""

    name: str
    description: str
    data_schema: str
    """The common schema a site's export is mapped onto (``[data] schema`` of a site.toml)."""
    feature_names: tuple[str, ...]
    num_institutions: int
    loader: DataLoader
    reference_scale: Mapping[str, tuple[float, float]]
    """Feature -> (centre, scale): the fixed constants every site and the API scale with."""
    defaults: Mapping[str, Any]
    """Run-config defaults (kebab-case keys)."""
    default_seeds: tuple[int, ...]
    registry_name: str
    """The name its published models get in the registry (what clinicians ask for)."""
    headline_metric: str
    reference_source: str = ""
    reference: Mapping[str, float] = field(default_factory=dict)
    """Method -> the published mean of per-institution test metric."""
    task: TaskDefinition | None = None
    """The task file's definition this scenario was built from."""
    task_path: Path | None = None
    key: str = ""
    """What a run config names it by: the name of a built-in, the path of a task file."""

    @property
    def run_key(self) -> str:
        return self.key or self.name

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def input_transform(self) -> InputTransform:
        """The model's input transform: the task's reference constants, never data."""
        return {
            "schema": self.data_schema,
            "names": list(self.feature_names),
            "mean": [float(self.reference_scale[f][0]) for f in self.feature_names],
            "scale": [float(self.reference_scale[f][1]) for f in self.feature_names],
        }


def from_task(task: TaskDefinition, *, path: Path | None = None) -> Scenario:
    """The scenario of a task file: its features, constants, defaults and data loader.

    The loader reads the data set the task ships (built-in tasks), or the export given
    as the data path, mapped by the task's own ``packaged_data.mapping``.
    """
    from countyfl.clinical.pipeline import export_dataset, packaged_dataset

    def _load(data_path: Path | None, partition_seed: int) -> FederatedDataset:
        if data_path is not None and data_path.suffix == TASK_FILE_SUFFIX:
            return export_dataset(task, data_path, partition_seed)
        if task.packaged_data is None and data_path is not None:
            return export_dataset(task, data_path, partition_seed)
        return packaged_dataset(task, data_path, partition_seed)

    simulation = task.simulation
    if simulation is None:
        institutions = 1
    elif simulation.county is not None:
        county = simulation.county
        institutions = 1 + county.townships + county.villages
    else:
        institutions = max(len(simulation.institutions), 1)
    return Scenario(
        name=task.name,
        description=task.description,
        data_schema=task.schema_name,
        feature_names=task.feature_names,
        num_institutions=institutions,
        loader=_load,
        reference_scale=task.reference_scale(),
        defaults={
            key: value
            for key, value in task.run_defaults().items()
            # The run's own switches keep the run config's defaults unless a task sets them.
            if key not in ("dp", "target-epsilon", "delta", "max-grad-norm", "encryption")
        },
        default_seeds=simulation.default_seeds if simulation else (42, 43, 44),
        registry_name=task.registry_name,
        headline_metric=task.headline_metric,
        reference_source=task.reference_source,
        reference=dict(task.reference),
        task=task,
        task_path=path,
    )


def from_task_file(path: Path) -> Scenario:
    """:func:`from_task` of a task file (TaskFileError names the file and key)."""
    from countyfl.clinical.task import load_task

    return from_task(load_task(path), path=path)


_REGISTRY: dict[str, Scenario] = {}
# Built-in scenarios: name -> its task file in TASKS_DIR, or the module that registers it
# (loaded on first use).
_BUILT_IN = {
    "fed-heart-disease": "fed-heart-disease.toml",
    "framingham-county": "framingham-county.toml",
    # Scenarios whose data a module generates register themselves when it is imported.
    "county": "countyfl.scenarios.county",
    "county-16": "countyfl.scenarios.county",
    "county-64": "countyfl.scenarios.county",
    "county-1024": "countyfl.scenarios.county",
}


def register(scenario: Scenario) -> Scenario:
    """Make ``scenario`` known by its name; a second scenario of that name is an error."""
    known = _REGISTRY.get(scenario.name)
    if known is not None and known is not scenario:
        raise ValueError(f"a scenario called {scenario.name!r} is already registered")
    _REGISTRY[scenario.name] = scenario
    return scenario


def is_built_in(name: str) -> bool:
    """Whether ``name`` is a built-in scenario's (not a county's task)."""
    return name in _BUILT_IN


def task_digest(task: TaskDefinition) -> str:
    """sha256 (hex) of a task's canonical JSON: what identifies a county's task everywhere."""
    return hashlib.sha256(_canonical_task(task)).hexdigest()


def _canonical_task(task: TaskDefinition) -> bytes:
    return json.dumps(
        task.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def portable_key(name: str) -> str:
    """A run config's ``scenario`` that every process of a deployment can resolve.

    A county's task file exists on the county's machine only: its path means nothing to a
    site or to Flower's ServerApp process. The key carries the task itself (compressed
    canonical JSON, base64url, no quotes or spaces), so the ServerApp, the sites' manifest
    checks and publishing all read the same task. Built-in names are returned as they are.
    """
    scenario = get(name)
    if is_built_in(name) or scenario.task is None or name.startswith(INLINE_TASK_PREFIX):
        return name
    packed = base64.urlsafe_b64encode(zlib.compress(_canonical_task(scenario.task), 9))
    return INLINE_TASK_PREFIX + packed.decode("ascii")


@lru_cache(maxsize=64)
def display_name(key: str) -> str:
    """What to call a run config's ``scenario`` for people: a built-in name as it is, the
    name of a task carried inline (never its packed text), a task file's name.

    Never raises: an inline task that cannot be read is called so.
    """
    if key.startswith(INLINE_TASK_PREFIX):
        try:
            return _inline_task(key).name
        except UnknownNameError:
            return "a county task that cannot be read"
    if key.endswith(TASK_FILE_SUFFIX):
        return Path(key).name
    return key


def _inline_task(key: str) -> TaskDefinition:
    from countyfl.clinical.task import TaskFileError, parse_task

    source = Path("run config scenario")
    try:
        packed = base64.urlsafe_b64decode(key.removeprefix(INLINE_TASK_PREFIX).encode("ascii"))
        decompressor = zlib.decompressobj()
        text = decompressor.decompress(packed, MAX_INLINE_TASK_BYTES)
        if decompressor.unconsumed_tail:
            raise ValueError("too large")
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a table")
    except (ValueError, UnicodeError, zlib.error):
        raise UnknownNameError(
            "the run config's scenario starts with 'task:' but does not carry a readable task "
            "(it is written by `countyfl run --run-config scenario=TASK.toml`)"
        ) from None
    try:
        return parse_task(raw, source=source)
    except TaskFileError as error:
        raise UnknownNameError(str(error)) from None


def names() -> list[str]:
    """Every scenario's name, built-in ones first."""
    return [*_BUILT_IN, *(n for n in _REGISTRY if n not in _BUILT_IN)]


def get(name: str) -> Scenario:
    """The scenario called ``name``, or of the task file at path ``name``.

    UnknownNameError names the valid ones.
    """
    if name not in _REGISTRY and name in _BUILT_IN:
        source = _BUILT_IN[name]
        if source.endswith(TASK_FILE_SUFFIX):
            register(from_task_file(TASKS_DIR / source))
        else:
            importlib.import_module(source)
    if name not in _REGISTRY and name.startswith(INLINE_TASK_PREFIX):
        scenario = from_task(_inline_task(name))
        if scenario.name in _BUILT_IN:
            raise UnknownNameError(
                f"the run's task {scenario.name!r} has the name of a built-in scenario; "
                "give it a name of its own"
            )
        _REGISTRY[name] = replace(scenario, key=name)
    if name not in _REGISTRY and name.endswith(TASK_FILE_SUFFIX):
        scenario = from_task_file(Path(name))
        if scenario.name in _BUILT_IN:
            raise UnknownNameError(
                f"{name}: task {scenario.name!r} has the name of a built-in scenario; "
                "give it a name of its own"
            )
        _REGISTRY[name] = replace(scenario, key=name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown scenario {name!r}; choose one of {', '.join(names())}"
        ) from None


@lru_cache(maxsize=8)
def load(name: str, data_path: str = "", partition_seed: int = 2026) -> FederatedDataset:
    """The preprocessed federated data set of scenario ``name`` (cached per process).

    A simulated institution's ClientApp calls this every round; the cache keeps it from
    re-reading its CSV.
    """
    return get(name).loader(Path(data_path) if data_path else None, partition_seed)
