"""Runs a scenario on Flower's Simulation Engine for several seeds, with baselines and a report.

Each seed is a ``flwr run`` to a SuperLink in simulation mode that lives as long as the
request (:mod:`countyfl.simulations.engine`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from countyfl import models, scenarios
from countyfl.data import FederatedDataset
from countyfl.data.quarantine import write_quarantine
from countyfl.errors import ConfigError, SimulationError
from countyfl.privacy.membership_inference import membership_inference_auc
from countyfl.publishing import PUBLISHED_DIR, publish
from countyfl.registry.published import ARTIFACT_FILE, read_published
from countyfl.run_config import EncryptionName, RunConfig, parse_run_config
from countyfl.runs import HISTORY_FILE, CalibrationRecord, FederationHistory
from countyfl.scenarios import Scenario
from countyfl.simulations.baselines import MethodMetrics, evaluate_everywhere, train_baselines
from countyfl.training.local import predict_proba

if TYPE_CHECKING:
    from countyfl.simulations.engine import SimulationLink

logger = logging.getLogger(__name__)

QUARANTINE_FILE = "quarantine.csv"
ProgressCallback = Callable[[str, int, int], None]  # (label, completed, total)


@dataclass(frozen=True)
class SimulationRequest:
    """What a researcher asks for: a scenario, seeds, run-config overrides, an output folder."""

    scenario: str
    output_dir: Path
    seeds: Sequence[int] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    baselines: bool = True
    verbose: bool = False


@dataclass
class SeedResult:
    """One seed: the federated history and the test metrics of every method."""

    seed: int
    history: FederationHistory
    methods: dict[str, MethodMetrics]
    wall_seconds: float
    # method -> predicted probabilities on all test rows pooled (federated and pooled only)
    pooled_test_predictions: dict[str, np.ndarray] = field(default_factory=dict)
    # institution id -> membership-inference AUC against the final federated model
    membership_inference: dict[str, float] = field(default_factory=dict)
    # The intercept shift the published model carries (calibrated runs; countyfl.runs)
    calibration: CalibrationRecord | None = None


@dataclass
class SimulationResult:
    """Everything the report is made from."""

    scenario: Scenario
    config: RunConfig
    dataset: FederatedDataset
    seeds: list[SeedResult]
    output_dir: Path


def build_config(
    scenario: Scenario, seed: int, overrides: Mapping[str, Any], output: Path
) -> RunConfig:
    """The run config of one seed: scenario defaults, then the researcher's overrides.

    Every path in it is made absolute: the apps run in Flower's own processes, whose working
    folder is not the researcher's.
    """
    values = {**scenario.defaults, **overrides, "scenario": scenario.run_key, "seed": seed}
    values["output-dir"] = str(output)
    # Without --sites-dir every seed simulates its own, fresh institutions (independent
    # repetitions); with it, every seed and every later run composes in the same ledgers.
    values.setdefault("sites-dir", str(output / "sites"))
    for key in PATH_KEYS:
        if values.get(key):
            values[key] = str(Path(str(values[key])).expanduser().absolute())
    return parse_run_config(values)


PATH_KEYS = ("output-dir", "sites-dir", "data-path", "he-secret-context", "he-public-context")
"""Run-config keys that name a file or folder of this machine."""


def run_federated(
    config: RunConfig,
    num_institutions: int,
    on_round_end: Callable[[int], None] | None = None,
    verbose: bool = False,
    link: SimulationLink | None = None,
) -> FederationHistory:
    """Run one federation on Flower's Simulation Engine; return its per-round history.

    The run goes to ``link`` (a local SuperLink in simulation mode, shared by the seeds of
    one request) through ``flwr run``; without one, a link is started for this run and
    stopped after it.
    """
    from countyfl.simulations.engine import SimulationLink, round_ends

    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / HISTORY_FILE).unlink(missing_ok=True)
    on_event = round_ends(on_round_end) if on_round_end is not None else None
    with contextlib.ExitStack() as stack:
        if link is None:
            link = stack.enter_context(SimulationLink(verbose))
        link.run(config, num_institutions, on_event)
    if not (output / HISTORY_FILE).is_file():
        raise SimulationError(
            f"the federated run for seed {config.seed} ended without writing its history to "
            f"{output}; rerun with --verbose to see Flower's log"
        )
    return FederationHistory.read(output / HISTORY_FILE)


def load_final_model(config: RunConfig, num_features: int) -> torch.nn.Module:
    """Publish the run's final model and load it.

    Under CKKS the server only has Enc(sum n w); the runner then acts as the key-holding
    publisher and decrypts it with the institutions' secret context.
    """
    folder = Path(config.output_dir)
    secret = Path(config.he_secret_context) if config.encryption is EncryptionName.CKKS else None
    publish(folder, folder / PUBLISHED_DIR, secret_context_path=secret)
    model = models.build(config.model, num_features)
    with np.load(folder / PUBLISHED_DIR / ARTIFACT_FILE) as arrays:
        model.load_state_dict({k: torch.from_numpy(arrays[k]) for k in arrays.files})
    return model


def run_simulation_request(
    request: SimulationRequest, progress: ProgressCallback | None = None
) -> SimulationResult:
    """Run every seed of the request; the caller writes the report from the result."""
    scenario = scenarios.get(request.scenario)
    seeds = list(request.seeds) or list(scenario.default_seeds)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    from countyfl.simulations.engine import SimulationLink

    # The SuperLink starts while the data loads and the keys are made.
    with SimulationLink(request.verbose) as link:
        request = _with_keys(request)
        base_config = build_config(scenario, seeds[0], request.overrides, request.output_dir)
        dataset = scenarios.load(
            base_config.scenario, base_config.data_path, base_config.partition_seed
        )
        if len(dataset.institutions) != scenario.num_institutions and "min-nodes" not in (
            request.overrides
        ):
            # A task whose institutions come from the export's split column: the ServerApp
            # must wait for every one of them, not for the count the task file implies.
            request = dataclasses.replace(
                request, overrides={**request.overrides, "min-nodes": len(dataset.institutions)}
            )
        request.output_dir.mkdir(parents=True, exist_ok=True)
        write_quarantine(request.output_dir / QUARANTINE_FILE, dataset.quarantined)
        results = [_run_seed(request, scenario, dataset, seed, link, progress) for seed in seeds]
    return SimulationResult(scenario, base_config, dataset, results, request.output_dir)


def _run_seed(
    request: SimulationRequest,
    scenario: Scenario,
    dataset: FederatedDataset,
    seed: int,
    link: SimulationLink,
    progress: ProgressCallback | None,
) -> SeedResult:
    """One seed: the federated run on ``link``, its baselines and its metrics."""
    config = build_config(scenario, seed, request.overrides, request.output_dir / f"seed-{seed}")
    rounds = config.num_server_rounds
    label = f"seed {seed}"
    if progress:
        progress(label, 0, rounds)
    started = time.perf_counter()
    history = run_federated(
        config,
        len(dataset.institutions),
        _round_reporter(progress, label, rounds),
        request.verbose,
        link,
    )
    elapsed = time.perf_counter() - started
    _check_history(history, rounds, seed)
    trained = {"federated": load_final_model(config, dataset.num_features)}
    if request.baselines:
        if progress:
            progress(f"{label} baselines", 0, 1)
        trained.update(train_baselines(dataset, config.model, config.training_plan, rounds, seed))
        if progress:
            progress(f"{label} baselines", 1, 1)
    _, _, x_test, _ = dataset.pooled()
    return SeedResult(
        seed,
        history,
        {name: evaluate_everywhere(model, dataset) for name, model in trained.items()},
        elapsed,
        {
            name: predict_proba(model, x_test)
            for name, model in trained.items()
            if name in ("federated", "pooled")
        },
        {
            i.institution_id: membership_inference_auc(
                trained["federated"], i.x_train, i.y_train, i.x_test, i.y_test
            )
            for i in dataset.institutions
        },
        # The shift the published model carries (under distributed noise only the key
        # holder who published could compute it; the run folder holds the ciphertext).
        read_published(Path(config.output_dir) / PUBLISHED_DIR)[0].calibration,
    )


def _with_keys(request: SimulationRequest) -> SimulationRequest:
    """Under CKKS without key files given, hold a key ceremony for this simulation."""
    overrides = dict(request.overrides)
    if overrides.get("encryption") != "ckks" or overrides.get("he-secret-context"):
        return request
    from countyfl.privacy.he.keys import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE, init_keys

    folder = request.output_dir / "keys"
    init_keys(folder, force=True)
    overrides["he-secret-context"] = str(folder / SECRET_CONTEXT_FILE)
    overrides["he-public-context"] = str(folder / PUBLIC_CONTEXT_FILE)
    return dataclasses.replace(request, overrides=overrides)


def _round_reporter(
    progress: ProgressCallback | None, label: str, rounds: int
) -> Callable[[int], None] | None:
    if progress is None:
        return None

    def report(server_round: int) -> None:
        progress(label, server_round, rounds)

    return report


def _check_history(history: FederationHistory, rounds: int, seed: int) -> None:
    missing = [r for r in range(1, rounds + 1) if r not in history.rounds]
    if missing:
        raise SimulationError(f"seed {seed}: rounds {missing} did not complete")
    for number, record in history.rounds.items():
        for message in record.failures:
            logger.warning("seed %d round %d: %s", seed, number, message)
        if not record.evaluate:
            raise SimulationError(
                f"seed {seed} round {number}: no institution returned an evaluation "
                f"({len(record.failures)} failures, first: "
                f"{record.failures[0] if record.failures else 'none'})"
            )
