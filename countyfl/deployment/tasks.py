"""Task manifests: what a federated run asks of a site, its hash, approval and refusals.

A task manifest is derived from the run configuration alone (:func:`manifest_for`), so the
ClientApp derives it from the run config it actually receives: a server cannot show a site
an approved manifest and send a different configuration. A site approves a manifest's
hash (:func:`approve_task` appends it to site.toml); :func:`check_approved` refuses every
configuration whose manifest hash the site has not approved, and :func:`record_refusal`
keeps a site-local record of each refusal.

Hash (:func:`manifest_hash`): sha256 of the manifest's canonical JSON, that is
``json.dumps(manifest.model_dump(mode="json", by_alias=True), sort_keys=True,
separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` encoded as UTF-8: kebab-case
keys sorted at every level, no whitespace, enums as their values, floats in Python's
shortest round-trip form, ``null`` for an absent section.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from countyfl import scenarios
from countyfl.clinical.task import TaskDefinition
from countyfl.deployment.site import (
    ApprovedTask,
    SiteConfig,
    SiteConfigError,
    load_site,
    toml_string,
)
from countyfl.errors import (
    ConfigError,
    CountyflError,
    UnknownNameError,
    describe_validation_error,
)
from countyfl.naming import kebab_case
from countyfl.privacy.modes import AccountantName, CalibrationName, DpNoise, DpRandomness
from countyfl.privacy.release import describe, inventory
from countyfl.privacy.weighting import AggregationWeight, LocalStepsPolicy
from countyfl.run_config import (
    EncryptionName,
    RunConfig,
    StrategyName,
    parse_run_config,
)
from countyfl.training.plan import OptimizerName

# 2: min-contributors (issue 16); a version-1 manifest must be written and approved anew.
MANIFEST_VERSION: Final = 2
# Run-config fields a manifest leaves out, and why. Every other field is in the manifest
# (tests/deployment check that this list and the manifest cover RunConfig exactly).
EXCLUDED_RUN_CONFIG_FIELDS: Mapping[str, str] = {
    "seed": "changes the random draws, not what is computed or what leaves the site",
    "partition_seed": "partitions simulated data only; a site trains on its own export",
    "data_path": "a simulation's data file; a site reads the export its site.toml names",
    "output_dir": "where the server writes its report; nothing of the site's",
    "sites_dir": "simulated sites' folders; a site keeps its state in its state_dir",
    "budget_epsilon": "a fact of the site (site.toml [privacy]), never the server's to set",
    "grad_sample_mode": "how Opacus computes per-sample gradients; same result and privacy",
    "he_secret_context": "a site uses the CKKS context its own site.toml names",
    "he_public_context": "the aggregator's key file; the key fingerprint is checked per reply",
    "min_nodes": "how many institutions the server waits for; not what a site computes or sends",
    "node_wait_seconds": "how long the server waits for them; not what a site computes or sends",
    "fraction_train": "which institutions the server asks each round; a site calibrates its "
    "noise for every round, so taking part in fewer rounds spends less, never more",
    "fraction_evaluate": "which institutions the server asks to evaluate; not what a site sends",
}


class TaskManifestError(ConfigError):
    """A task manifest file is unreadable, malformed, or not what its settings derive."""


class TaskNotApprovedError(CountyflError):
    """A site has not approved the task a run asks it to do."""

    def __init__(self, message: str, *, task_hash: str, institution_id: str) -> None:
        super().__init__(message)
        self.task_hash = task_hash
        self.institution_id = institution_id


class TaskAlreadyApprovedError(CountyflError):
    """The site.toml already approves this task."""


class DifferentialPrivacyTerms(BaseModel):
    """The DP-SGD terms of a task (Abadi et al., CCS 2016): what one run may spend."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=kebab_case, populate_by_name=True
    )

    target_epsilon: float = Field(gt=0, description="epsilon one run spends at this site")
    delta: float = Field(gt=0, lt=1)
    max_grad_norm: float = Field(gt=0, description="per-example clipping norm")
    accountant: AccountantName
    count_noise: float = Field(gt=0, description="noise (records) on the run's example count")
    dp_randomness: DpRandomness = Field(description="a deployed site refuses all but secret")
    # None: FedAvg's weight and the task's local steps everywhere (a manifest written before
    # these choices existed keeps its hash); else the choice (countyfl.privacy.weighting).
    aggregation_weight: AggregationWeight | None = None
    local_steps_policy: LocalStepsPolicy | None = None
    # None: no recalibration (a manifest written before it existed keeps its hash); else
    # the method and the noise, in records, on each calibration sum.
    calibration: CalibrationName | None = None
    calibration_noise: float | None = Field(default=None, gt=0)
    # None: each site's own rate and local noise (a manifest written before these existed
    # keeps its hash); else the run's Poisson rate and where the noise is added.
    dp_sample_rate: float | None = Field(default=None, gt=0, le=1)
    dp_noise: DpNoise | None = None

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in (
            "aggregation-weight",
            "aggregation_weight",
            "local-steps-policy",
            "local_steps_policy",
            "calibration",
            "calibration-noise",
            "calibration_noise",
            "dp-sample-rate",
            "dp_sample_rate",
            "dp-noise",
            "dp_noise",
        ):
            if key in data and data[key] is None:
                del data[key]
        return data


class TaskManifest(BaseModel):
    """What a federated run asks a site to do, and what leaves the site if it agrees."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=kebab_case, populate_by_name=True
    )

    manifest_version: Literal[2] = MANIFEST_VERSION
    model: str
    # A built-in scenario's name, or a county task's name (then task-sha256 says which).
    scenario: str = Field(min_length=1, max_length=1024)
    task_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="a county's task: sha256 of its canonical definition (the site's own "
        "task file must be the same task)",
    )
    data_schema: str = Field(alias="schema", min_length=1, max_length=64)
    features: tuple[str, ...]
    strategy: StrategyName
    num_server_rounds: int = Field(ge=1)
    local_steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    optimizer: OptimizerName
    momentum: float = Field(ge=0)
    weight_decay: float = Field(ge=0)
    proximal_mu: float = Field(ge=0)
    min_contributors: int = Field(
        ge=1, description="the fewest institutions an aggregate may hold to be decrypted or used"
    )
    differential_privacy: DifferentialPrivacyTerms | None
    encryption: EncryptionName
    leaves_site: tuple[str, ...]

    @property
    def dp(self) -> bool:
        return self.differential_privacy is not None

    @model_serializer(mode="wrap")
    def _without_task_digest(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A built-in scenario's manifest keeps the shape (and hash) it had before tasks.
        data: dict[str, Any] = handler(self)
        for key in ("task-sha256", "task_sha256"):
            if key in data and data[key] is None:
                del data[key]
        return data


def leaves_site(
    encryption: EncryptionName, privacy: DifferentialPrivacyTerms | None
) -> tuple[str, ...]:
    """Everything a site sends while running such a task: its release inventory, in words."""
    if privacy is None:
        summary = "trained WITHOUT differential privacy"
    else:
        source = (
            "a secret source"
            if privacy.dp_randomness is DpRandomness.SECRET
            else "the run's seed (NO privacy against whoever knows it)"
        )
        calibrated = privacy.calibration is not None
        summary = (
            f"DP-SGD, the noisy example count{' and the calibration sums' if calibrated else ''}"
            f" together spend epsilon "
            f"{privacy.target_epsilon} per run at delta {privacy.delta} (gradients clipped to "
            f"norm {privacy.max_grad_norm}, count noise {privacy.count_noise} records"
            + (f", calibration noise {privacy.calibration_noise} records" if calibrated else "")
            + f", every draw from {source})"
        )
        if privacy.dp_noise is DpNoise.DISTRIBUTED:
            summary += (
                "; DISTRIBUTED noise: each update carries only a share of the noise, and the "
                "guarantee assumes the county server never lets a key holder decrypt an "
                "aggregate of fewer than min-contributors updates"
            )
    return (
        summary,
        *describe(
            inventory(
                encrypted=encryption is EncryptionName.CKKS,
                dp=privacy is not None,
                calibration=privacy is not None and privacy.calibration is not None,
                distributed=privacy is not None and privacy.dp_noise is DpNoise.DISTRIBUTED,
            )
        ),
    )


def manifest_for(config: RunConfig) -> TaskManifest:
    """The task manifest of a run configuration (see :data:`EXCLUDED_RUN_CONFIG_FIELDS`)."""
    privacy = (
        DifferentialPrivacyTerms(
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            max_grad_norm=config.max_grad_norm,
            accountant=config.accountant,
            count_noise=config.count_noise,
            dp_randomness=config.dp_randomness,
            aggregation_weight=(
                None
                if config.aggregation_weight is AggregationWeight.EXAMPLES
                else config.aggregation_weight
            ),
            local_steps_policy=(
                None
                if config.local_steps_policy is LocalStepsPolicy.FIXED
                else config.local_steps_policy
            ),
            calibration=(
                None if config.calibration is CalibrationName.NONE else config.calibration
            ),
            calibration_noise=(
                None if config.calibration is CalibrationName.NONE else config.calibration_noise
            ),
            dp_sample_rate=config.dp_sample_rate or None,
            dp_noise=None if config.dp_noise is DpNoise.LOCAL else config.dp_noise,
        )
        if config.dp
        else None
    )
    scenario = scenarios.get(config.scenario)
    county_task = scenario.task if not scenarios.is_built_in(config.scenario) else None
    return TaskManifest(
        model=config.model,
        # A county's task by name and digest: the same manifest whether the run config
        # names its file (at the county) or carries it (scenarios.portable_key).
        scenario=config.scenario if county_task is None else county_task.name,
        task_sha256=None if county_task is None else scenarios.task_digest(county_task),
        schema=scenario.data_schema,
        features=scenario.feature_names,
        strategy=config.strategy,
        num_server_rounds=config.num_server_rounds,
        local_steps=config.local_steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        # FedAvg ignores proximal-mu (RunConfig.training_plan): it does not change the task.
        proximal_mu=config.proximal_mu if config.strategy is StrategyName.FEDPROX else 0.0,
        min_contributors=config.min_contributors,
        differential_privacy=privacy,
        encryption=config.encryption,
        leaves_site=leaves_site(config.encryption, privacy),
    )


def canonical_json(manifest: TaskManifest) -> bytes:
    """The manifest's canonical JSON bytes (the input of :func:`manifest_hash`)."""
    return json.dumps(
        manifest.model_dump(mode="json", by_alias=True),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def manifest_hash(manifest: TaskManifest) -> str:
    """sha256 (hex) of the manifest's canonical JSON: sorted keys, no whitespace, UTF-8."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def task_name(manifest: TaskManifest) -> str:
    """A one-line description of a task, for people: model, scenario, rounds, privacy."""
    privacy = manifest.differential_privacy
    dp = (
        f"DP epsilon {privacy.target_epsilon:g} per run (delta {privacy.delta:g})"
        if privacy is not None
        else "no DP"
    )
    return (
        f"{manifest.model} on {manifest.scenario}, {manifest.strategy.value}, "
        f"{manifest.num_server_rounds} rounds, {dp}, encryption {manifest.encryption.value}"
    )


def verify_manifest(manifest: TaskManifest, task: TaskDefinition | None = None) -> None:
    """Refuse a manifest whose derived parts (schema, features, leaves-site) were edited.

    Such a manifest matches no run configuration, so approving it would approve nothing
    and, worse, show the approver a description that the run does not have.

    A county task's manifest (``task-sha256``) is checked against ``task``, the site's own
    task file, which must be that very task; without it only leaves-site can be checked.
    """
    expected: dict[str, Any] = {
        "leaves-site": leaves_site(manifest.encryption, manifest.differential_privacy)
    }
    if manifest.task_sha256 is None:
        try:
            scenario = scenarios.get(manifest.scenario)
        except UnknownNameError as error:
            raise TaskManifestError(f"task manifest: {error}") from None
        expected |= {"schema": scenario.data_schema, "features": scenario.feature_names}
    elif task is not None:
        digest = scenarios.task_digest(task)
        if digest != manifest.task_sha256 or task.name != manifest.scenario:
            raise TaskManifestError(
                f"the task manifest is for task {manifest.scenario!r} (sha256 "
                f"{manifest.task_sha256[:12]}), but this site's task file holds task "
                f"{task.name!r} (sha256 {digest[:12]}): the county and the site must use the "
                "same task file; ask the county for its file and map your export onto it"
            )
        scenario = scenarios.from_task(task)
        expected |= {"schema": scenario.data_schema, "features": scenario.feature_names}
    actual = {
        "schema": manifest.data_schema,
        "features": manifest.features,
        "leaves-site": manifest.leaves_site,
    }
    actual = {key: actual[key] for key in expected}
    wrong = [key for key in expected if expected[key] != actual[key]]
    if wrong:
        raise TaskManifestError(
            f"task manifest fields {wrong} are not what countyfl derives from its settings; "
            "the file was edited by hand. Regenerate it with `countyfl task manifest`."
        )


def run_config_from_overrides(overrides: Mapping[str, Any]) -> RunConfig:
    """A run config from a scenario's defaults plus ``overrides`` (kebab-case keys).

    The scenario is ``overrides["scenario"]`` (default ``fed-heart-disease``).
    """
    scenario = str(overrides.get("scenario", "fed-heart-disease"))
    try:
        defaults = scenarios.get(scenario).defaults
    except UnknownNameError as error:
        raise ConfigError(str(error)) from None
    return parse_run_config({**defaults, "scenario": scenario, **overrides})


def write_task_file(manifest: TaskManifest, path: Path) -> str:
    """Write a manifest as readable JSON (kebab-case keys); return its hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True)
    path.write_text(text + "\n", encoding="utf-8")
    return manifest_hash(manifest)


def site_task(site: SiteConfig) -> TaskDefinition | None:
    """The county task a site's data are mapped onto (``[data] task``), if any."""
    definition = getattr(site.data, "definition", None)
    return definition if isinstance(definition, TaskDefinition) else None


def read_task_file(path: Path) -> TaskManifest:
    """Read and verify a task.json written by :func:`write_task_file`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TaskManifestError(f"{path}: cannot be read ({error})") from None
    try:
        manifest = TaskManifest.model_validate_json(text)
    except ValidationError as error:
        problems = describe_validation_error(error, whole="file")
        raise TaskManifestError(
            f"{path}: not a task manifest: {problems}. Write it with `countyfl task manifest`."
        ) from None
    verify_manifest(manifest)
    return manifest


def check_approved(site: SiteConfig, config: RunConfig) -> str:
    """The task hash of ``config`` if ``site`` approved it; else :class:`TaskNotApprovedError`.

    Parameters
    ----------
    site : SiteConfig
        The site's configuration with its ``[[approved_tasks]]``.
    config : RunConfig
        The run configuration the ClientApp received.

    Returns
    -------
    str
        The manifest hash (sha256 hex) of the approved task.
    """
    manifest = manifest_for(config)
    digest = manifest_hash(manifest)
    if digest in site.approved_hashes:
        own = site_task(site)
        if manifest.task_sha256 is not None and (
            own is None or scenarios.task_digest(own) != manifest.task_sha256
        ):
            # Approved once, but the site's task file has changed since: its data are no
            # longer mapped onto the task the county runs.
            raise TaskNotApprovedError(
                f"institution {site.institution_id} approved task {task_name(manifest)}, but "
                "its own task file ([data] task) is no longer that task (sha256 "
                f"{manifest.task_sha256[:12]}); restore the county's task file",
                task_hash=digest,
                institution_id=site.institution_id,
            )
        return digest
    site_file = site.source or "SITE.toml"
    raise TaskNotApprovedError(
        f"institution {site.institution_id} has not approved task {task_name(manifest)} "
        f"(sha256 {digest[:12]}); its site.toml approves {len(site.approved_tasks)} other "
        "task(s). To approve it, write the manifest with `countyfl task manifest "
        "--run-config ... --out task.json`, review what leaves the site, and run "
        f"`countyfl node approve --site {site_file} --task task.json`.",
        task_hash=digest,
        institution_id=site.institution_id,
    )


def enforce_approval(site: SiteConfig, config: RunConfig, *, run_id: int | str) -> str:
    """:func:`check_approved`, recording a refusal in the site's refusals.jsonl before raising.

    What a ClientApp calls before it touches any data: it returns the approved task's hash,
    or records the refusal and re-raises :class:`TaskNotApprovedError` (whose message is
    what the ClientApp replies with).
    """
    try:
        return check_approved(site, config)
    except TaskNotApprovedError as refusal:
        record_refusal(site, task_hash=refusal.task_hash, reason=str(refusal), run_id=run_id)
        raise


@dataclass(frozen=True)
class Refusal:
    """One task a site refused, as recorded in ``state_dir/refusals.jsonl``."""

    time: datetime
    run_id: str
    task_hash: str
    reason: str


def record_refusal(
    site: SiteConfig,
    *,
    task_hash: str,
    reason: str,
    run_id: int | str,
    now: datetime | None = None,
) -> Refusal:
    """Append one refusal as a JSON line to the site's ``refusals.jsonl``.

    ``reason`` is a message for people (the refusal's error message); it must never hold
    patient data or key material, and countyfl's refusal messages do not.
    """
    refusal = Refusal(
        time=(now or datetime.now(UTC)).replace(microsecond=0),
        run_id=str(run_id),
        task_hash=task_hash,
        reason=reason,
    )
    line = json.dumps(
        {
            "time": refusal.time.isoformat(),
            "institution-id": site.institution_id,
            "run-id": refusal.run_id,
            "task-sha256": refusal.task_hash,
            "reason": refusal.reason,
        },
        ensure_ascii=False,
        sort_keys=True,
    )
    site.state_dir.mkdir(parents=True, exist_ok=True)
    # One write of one line in append mode: concurrent writers do not interleave lines.
    with site.refusals_path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return refusal


def read_refusals(site: SiteConfig) -> list[Refusal]:
    """Every refusal the site recorded, oldest first (empty if none)."""
    path = site.refusals_path
    if not path.is_file():
        return []
    refusals = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            refusals.append(
                Refusal(
                    time=datetime.fromisoformat(entry["time"]),
                    run_id=str(entry["run-id"]),
                    task_hash=str(entry["task-sha256"]),
                    reason=str(entry["reason"]),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise CountyflError(
                f"{path}:{number}: not a refusal record ({error!r}); the file is append-only "
                "and written by countyfl, so restore it from a backup or move that line away"
            ) from None
    return refusals


def _toml_datetime(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def approve_task(
    site_path: Path,
    manifest: TaskManifest,
    *,
    approved_by: str,
    now: datetime | None = None,
) -> ApprovedTask:
    """Append an ``[[approved_tasks]]`` entry for ``manifest`` to the site.toml.

    The file is only appended to (the administrator's text, comments and layout are kept)
    and re-validated afterwards; if the result is not a valid site.toml approving this
    task, the original bytes are restored and :class:`SiteConfigError` is raised.

    Parameters
    ----------
    site_path : pathlib.Path
        The site.toml.
    manifest : TaskManifest
        The task, as read by :func:`read_task_file` and shown to the approver.
    approved_by : str
        Who approves (a person's name or login).
    now : datetime.datetime, optional
        Time of approval (default: now, UTC).

    Returns
    -------
    ApprovedTask
        The entry as it now stands in the site.toml.

    Raises
    ------
    TaskAlreadyApprovedError
        The site.toml already approves this task's hash.
    TaskManifestError
        The manifest was edited by hand, or its data schema is not the site's.
    """
    site = load_site(site_path, require_data=False)
    verify_manifest(manifest, site_task(site))
    if manifest.task_sha256 is not None and site_task(site) is None:
        raise TaskManifestError(
            f"the task trains on the county task {manifest.scenario!r}, but {site_path} maps "
            "its data onto no task file ([data] task); this site cannot run it"
        )
    if manifest.data_schema != site.data.data_schema:
        raise TaskManifestError(
            f"the task trains on {manifest.data_schema} data but {site_path} holds "
            f"{site.data.data_schema} data (data.schema); this site cannot run it"
        )
    # One printable line: it also goes into a TOML comment, where control characters are invalid.
    approver = " ".join("".join(c if c.isprintable() else " " for c in approved_by).split())
    if not approver:
        raise ConfigError("approved_by is empty; give the approver's name (--by NAME)")
    digest = manifest_hash(manifest)
    if digest in site.approved_hashes:
        raise TaskAlreadyApprovedError(
            f"{site_path} already approves task {task_name(manifest)} (sha256 {digest[:12]}); "
            "nothing was written"
        )
    name = task_name(manifest)
    moment = _toml_datetime(now or datetime.now(UTC))
    block = (
        f"\n# Approved with `countyfl node approve` by {approver} at {moment}.\n"
        "[[approved_tasks]]\n"
        f"sha256 = {toml_string(digest)}\n"
        f"name = {toml_string(name)}\n"
        f"approved_by = {toml_string(approver)}\n"
        f"approved_at = {moment}\n"
    )
    original = site_path.read_bytes()
    prefix = "" if not original or original.endswith(b"\n") else "\n"
    with site_path.open("a", encoding="utf-8") as handle:
        handle.write(prefix + block)
    try:
        updated = load_site(site_path, require_data=False)
        if digest not in updated.approved_hashes:
            raise SiteConfigError(f"{site_path}: the appended approval is not read back")
    except SiteConfigError as error:
        site_path.write_bytes(original)
        raise SiteConfigError(
            f"appending the approval made {site_path} invalid, so the file was restored as it "
            f"was: {error}. If the file sets approved_tasks as an inline array, rewrite it as "
            "[[approved_tasks]] tables."
        ) from None
    return next(task for task in updated.approved_tasks if task.sha256 == digest)
