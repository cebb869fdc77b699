"""Run configuration: a frozen pydantic model parsed once from Flower's flat run config.

Flower's run config (``[tool.flwr.app.config]`` in pyproject.toml, ``flwr run --run-config``,
or the simulation runner) is a flat mapping with kebab-case keys. :func:`parse_run_config`
is the only place that reads it; everything else receives a :class:`RunConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from countyfl.errors import ConfigError, describe_validation_error
from countyfl.naming import kebab_case
from countyfl.privacy.modes import (
    AccountantName,
    CalibrationName,
    DpNoise,
    DpRandomness,
    GradSampleMode,
)
from countyfl.privacy.weighting import AggregationWeight, LocalStepsPolicy
from countyfl.training.plan import OptimizerName, TrainingPlan


class EncryptionName(StrEnum):
    """How updates travel to the county aggregator."""

    NONE = "none"
    CKKS = "ckks"


class StrategyName(StrEnum):
    """Aggregation strategies of the county node."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"


class RunConfig(BaseModel):
    """Everything one federated run needs to know, shared by ServerApp and ClientApp."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=kebab_case, populate_by_name=True
    )

    # A built-in scenario's name, or the path of a county's task file (countyfl.scenarios).
    # A built-in name, a task file's path, or a task carried inline (scenarios.portable_key).
    scenario: str = Field(default="fed-heart-disease", min_length=1, max_length=1_400_000)
    model: str = "diagnosis-logreg"
    strategy: StrategyName = StrategyName.FEDAVG
    num_server_rounds: int = Field(default=15, ge=1, le=10_000)
    local_steps: int = Field(default=5, ge=1, le=100_000)
    batch_size: int = Field(default=16, ge=1, le=100_000)
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    optimizer: OptimizerName = OptimizerName.SGD
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    proximal_mu: float = Field(default=0.0, ge=0)
    seed: int = Field(default=42, ge=0)
    partition_seed: int = Field(default=2026, ge=0)
    data_path: str = ""
    output_dir: str = ""
    # Differential privacy (record-level, per institution; Opacus DP-SGD)
    dp: bool = True
    target_epsilon: float = Field(default=1.0, gt=0, le=1000, description="per run")
    delta: float = Field(default=1e-3, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    accountant: AccountantName = AccountantName.PRV
    grad_sample_mode: GradSampleMode = GradSampleMode.HOOKS
    # Standard deviation, in records, of the noise on each institution's example count
    # (released once per run, accounted with DP-SGD within target-epsilon).
    count_noise: float = Field(default=10.0, gt=0, le=1e6)
    # What each update is weighted by in the county's average, and how many DP-SGD steps a
    # small site runs per round (countyfl.privacy.weighting): both functions of the noisy
    # count and public settings, so post-processing that costs no epsilon.
    aggregation_weight: AggregationWeight = AggregationWeight.EXAMPLES
    local_steps_policy: LocalStepsPolicy = LocalStepsPolicy.FIXED
    # DP-SGD's Poisson rate, the same at every site; 0: each site's 1 / ceil(noisy count /
    # batch-size). Distributed noise needs it: every site must calibrate the same sigma.
    dp_sample_rate: float = Field(default=0.0, ge=0, le=1)
    # Where DP-SGD's noise is added (countyfl.privacy.modes.DpNoise): "local", each update
    # carries all of it; "distributed", each site a share sigma / sqrt(min-contributors) and
    # only the CKKS sum of at least min-contributors updates, which carries all of it, is
    # ever decrypted (docs/privacy.md, "Distributed noise").
    dp_noise: DpNoise = DpNoise.LOCAL
    # After the last round, shift the model's intercept so that its mean predicted risk
    # matches the prevalence, from three noisy sums per site over its training rows
    # (countyfl.privacy.calibration); the noise is the standard deviation, in records, of
    # each sum, and the release is accounted with DP-SGD within target-epsilon.
    calibration: CalibrationName = CalibrationName.NONE
    calibration_noise: float = Field(default=12.5, gt=0, le=1e6)
    # secret: DP draws from the OS CSPRNG; seeded: from `seed` (reproducible, simulation only)
    dp_randomness: DpRandomness = DpRandomness.SECRET
    # Simulated sites: each institution's folder (privacy ledger) and total budget.
    # In a deployment these are facts of the site's own site.toml, not of the run.
    sites_dir: str = ""
    budget_epsilon: float = Field(default=10.0, gt=0)
    # Encrypted aggregation (TenSEAL CKKS): key files from `countyfl keys init`.
    encryption: EncryptionName = EncryptionName.NONE
    # The secret context is read by simulated institutions only; in a deployment each site
    # reads its own from site.toml, and the county's ServerApp needs the public one only.
    he_secret_context: str = ""
    he_public_context: str = ""
    # Nodes that must be connected before a round starts; 0: all of the scenario's
    # institutions (a simulation's own). `countyfl run` sets it: by default to every node
    # the county registered, never below min-contributors.
    min_nodes: int = Field(default=0, ge=0, le=10_000)
    # How long the ServerApp waits while fewer than min-nodes are connected (before the
    # first round or between two) before it stops the run with a message saying so.
    node_wait_seconds: float = Field(default=600.0, gt=0, le=7 * 24 * 3600)
    # The fewest institutions an aggregate may hold to be decrypted or used: one of fewer
    # is discarded and recorded (an aggregate of one IS that institution's update, and
    # every key holder could read it). Part of the task manifest sites approve.
    min_contributors: int = Field(default=2, ge=1, le=10_000)
    # Partial participation: the share of connected institutions asked to train (and to
    # evaluate) each round, sampled by the server (at least min-contributors of them).
    fraction_train: float = Field(default=1.0, gt=0, le=1)
    fraction_evaluate: float = Field(default=1.0, gt=0, le=1)

    @field_validator("scenario")
    @classmethod
    def _known_scenario(cls, name: str) -> str:
        from countyfl import scenarios
        from countyfl.errors import UnknownNameError

        try:
            scenarios.get(name)
        except UnknownNameError as error:  # a KeyError: pydantic would not wrap it
            raise ValueError(str(error)) from None
        return name

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        from countyfl import models
        from countyfl.errors import UnknownNameError

        try:
            models.get(self.model)
        except UnknownNameError as error:  # a KeyError: pydantic would not wrap it
            raise ValueError(str(error)) from None
        if self.strategy is StrategyName.FEDPROX and self.proximal_mu == 0:
            raise ValueError("strategy fedprox needs proximal-mu > 0 (try 0.01)")
        if self.encryption is EncryptionName.CKKS and not self.he_public_context:
            raise ValueError(
                "encryption ckks needs he-public-context (the aggregator's public context "
                "written by `countyfl keys init`)"
            )
        if 0 < self.min_nodes < self.min_contributors:
            raise ValueError(
                f"min-nodes {self.min_nodes} is below min-contributors "
                f"{self.min_contributors}: every aggregate of that few institutions would be "
                f"discarded; set min-nodes to at least {self.min_contributors}"
            )
        if self.calibration is not CalibrationName.NONE and not self.dp:
            raise ValueError(
                f"calibration {self.calibration.value!r} releases sums over the training rows "
                "and needs differential privacy (dp = true) to pay for them"
            )
        if self.dp_noise is DpNoise.DISTRIBUTED:
            self._check_distributed()
        if self.dp and self.target_epsilon > self.budget_epsilon:
            raise ValueError(
                f"target-epsilon {self.target_epsilon} of one run exceeds the institutions' "
                f"whole budget-epsilon {self.budget_epsilon}"
            )
        return self

    def _check_distributed(self) -> None:
        """Distributed noise is sound only where the released sum is one DP-SGD step of the
        county: see docs/privacy.md, "Distributed noise"."""
        needs = {
            "dp = true": self.dp,
            "encryption = ckks (the server must not read a share-noised update)": (
                self.encryption is EncryptionName.CKKS
            ),
            "min-contributors >= 2 (the shares of fewer sites do not add up)": (
                self.min_contributors >= 2
            ),
            "local-steps = 1 (only one noisy step is linear in the shares)": (
                self.local_steps == 1
            ),
            "dp-sample-rate > 0 (every site must calibrate the same noise)": (
                self.dp_sample_rate > 0
            ),
            'aggregation-weight = "batch" (the weight must undo the step\'s divisor)': (
                self.aggregation_weight is AggregationWeight.BATCH
            ),
            'local-steps-policy = "fixed"': self.local_steps_policy is LocalStepsPolicy.FIXED,
            'strategy = "fedavg"': self.strategy is StrategyName.FEDAVG,
            # Adam's first step is about lr x sign(gradient): not linear in the shares
            'optimizer = "sgd"': self.optimizer is OptimizerName.SGD,
        }
        missing = [need for need, met in needs.items() if not met]
        if missing:
            raise ValueError("dp-noise distributed needs " + "; ".join(missing))

    @property
    def dp_noise_shares(self) -> int:
        """How many shares of sigma^2 the county's sum holds at least (1: local noise)."""
        return self.min_contributors if self.dp_noise is DpNoise.DISTRIBUTED else 1

    @property
    def dp_steps_per_run(self) -> int:
        """DP-SGD steps one institution really runs in this run: local steps x rounds."""
        return self.local_steps * self.num_server_rounds

    @property
    def training_plan(self) -> TrainingPlan:
        return TrainingPlan(
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            proximal_mu=self.proximal_mu if self.strategy is StrategyName.FEDPROX else 0.0,
        )

    def to_run_config(self) -> dict[str, str | int | float]:
        """The flat kebab-case mapping Flower carries (inverse of :func:`parse_run_config`)."""
        return {
            key: (value.value if isinstance(value, StrEnum) else value)
            for key, value in self.model_dump(by_alias=True).items()
        }


def parse_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Parse Flower's run config once; a bad key or value raises :class:`ConfigError`."""
    try:
        return RunConfig.model_validate(dict(run_config))
    except ValidationError as error:
        problems = describe_validation_error(error, whole="run config")
        raise ConfigError(f"invalid run config: {problems}") from None
