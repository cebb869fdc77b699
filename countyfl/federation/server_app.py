"""The ServerApp of the county node: builds the strategy, runs the rounds, writes the history."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from countyfl import models, protocol, scenarios
from countyfl.deployment.tasks import manifest_for, manifest_hash
from countyfl.errors import CountyflError
from countyfl.federation.grid import PromptGrid
from countyfl.federation.progress import NodesMissingError, ReportingGrid, RunProgress
from countyfl.federation.records import model_to_arrays
from countyfl.federation.rounds import run_rounds
from countyfl.federation.strategies.encrypted import EncryptedFedAvg, EncryptedFedProx
from countyfl.federation.strategies.recording import (
    RecordingStrategy,
    RoundCallback,
    record_discard,
    record_rejection,
)
from countyfl.federation.strategies.weighted import WeightedFedAvg, WeightedFedProx
from countyfl.files import write_file
from countyfl.privacy.he.wire import is_encrypted
from countyfl.privacy.modes import CalibrationName
from countyfl.run_config import EncryptionName, RunConfig, StrategyName, parse_run_config
from countyfl.runs import (
    CALIBRATION_AGGREGATE_FILE,
    EVENTS_FILE,
    FINAL_AGGREGATE_FILE,
    FINAL_MODEL_FILE,
    HISTORY_FILE,
    CalibrationRecord,
    EventLog,
    FederationHistory,
    RunRecord,
)

logger = logging.getLogger(__name__)

# Under CKKS the server ends with Enc(sum n w) in FINAL_AGGREGATE_FILE: a key holder
# publishes it (countyfl.publishing); the server never can.


def build_strategy(
    config: RunConfig,
    num_institutions: int,
    num_values: int,
    on_round_end: RoundCallback | None = None,
) -> RecordingStrategy:
    """The strategy the config names, wrapped to record every reply.

    Plaintext: Flower's own FedAvg or FedProx; CKKS: their encrypted versions, which hold
    the public context only and add along the county's levels. Each round the server asks
    ``fraction-train`` of the institutions to train (every one by default, at least
    ``min-contributors``) and ``fraction-evaluate`` to evaluate; an aggregate of fewer
    than ``min-contributors`` institutions is discarded and recorded.
    """
    history = FederationHistory()
    # Flower asks max(fraction x connected, min_*_nodes) nodes, counting the connected ones
    # when a round starts, which can be none yet under the simulation engine: the minimums
    # come from the expected number of institutions.
    to_train = max(config.min_contributors, math.ceil(config.fraction_train * num_institutions))
    common: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": min(to_train, num_institutions),
        "min_evaluate_nodes": max(1, math.ceil(config.fraction_evaluate * num_institutions)),
        # Under the simulation engine get_node_ids() can be empty at start: wait for all.
        "min_available_nodes": num_institutions,
    }
    inner: Strategy
    if config.encryption is EncryptionName.CKKS:
        encrypted = {
            "public_context_path": Path(config.he_public_context),
            "num_values": num_values,
            "on_reject": partial(record_rejection, history),
            "min_contributors": config.min_contributors,
            "on_discard": partial(record_discard, history),
            **common,
        }
        if config.strategy is StrategyName.FEDPROX:
            inner = EncryptedFedProx(proximal_mu=config.proximal_mu, **encrypted)
        else:
            inner = EncryptedFedAvg(**encrypted)
    elif config.strategy is StrategyName.FEDPROX:
        inner = WeightedFedProx(proximal_mu=config.proximal_mu, **common)
    else:
        inner = WeightedFedAvg(**common)
    return RecordingStrategy(
        inner,
        history,
        on_round_end,
        config.min_contributors,
        keep_calibration_ciphertexts=config.dp_noise_shares > 1,
    )


def run_federation(
    grid: Grid,
    config: RunConfig,
    on_round_end: RoundCallback | None = None,
    run_id: str = "",
    simulated: bool = False,
) -> None:
    """Run ``config.num_server_rounds`` rounds; write the run, its history and final model.

    ``simulated``: the nodes are the Simulation Engine's (messages are worded for it).
    """
    started = datetime.now(UTC)
    scenario = scenarios.get(config.scenario)
    num_features, num_institutions = scenario.num_features, scenario.num_institutions
    num_institutions = config.min_nodes or num_institutions
    torch.manual_seed(config.seed)
    random.seed(config.seed)  # Flower samples the institutions of a round with `random`
    initial = models.build(config.model, num_features)
    num_values = sum(int(t.numel()) for t in initial.state_dict().values())
    strategy = build_strategy(config, num_institutions, num_values)
    # What happens is reported as it happens (events.jsonl, for `countyfl run`), and a
    # wait for nodes that never come ends with a message instead of Flower's endless loop.
    progress = RunProgress(
        EventLog(Path(config.output_dir) / EVENTS_FILE) if config.output_dir else None,
        rounds=config.num_server_rounds,
        needed=num_institutions,
        wait_seconds=config.node_wait_seconds,
        run_id=run_id,
        simulated=simulated,
    )
    strategy.progress = progress
    prompt = isinstance(grid, PromptGrid)
    grid = ReportingGrid(grid, progress)
    if config.output_dir:
        # The history so far is on disk after every round, so that the console (and anyone
        # watching the folder) follows a live run; each write replaces the file atomically.
        strategy.on_round_end = partial(
            _write_history, strategy.history, Path(config.output_dir), on_round_end
        )
    else:
        strategy.on_round_end = on_round_end
    try:
        if prompt:  # the ServerApp's own grid (make_server_app): both phases in one batch
            result = run_rounds(
                strategy,
                grid,
                model_to_arrays(initial),
                config.num_server_rounds,
                train_config=ConfigRecord(),
                evaluate_config=ConfigRecord(),
            )
        else:
            result = strategy.start(
                grid=grid,
                initial_arrays=model_to_arrays(initial),
                num_rounds=config.num_server_rounds,
                train_config=ConfigRecord(),
                evaluate_config=ConfigRecord(),
            )
    except NodesMissingError:
        raise  # it reported itself
    except Exception as error:
        progress.failed(f"the ServerApp failed: {type(error).__name__}: {error}")
        raise
    if not len(result.arrays):
        # No round's aggregate was used (every one discarded or refused): the run ends on
        # its initial model, which Flower's result does not hold.
        result.arrays = model_to_arrays(initial)
    if config.output_dir:
        output = Path(config.output_dir)
        strategy.history.write(output / HISTORY_FILE)
        RunRecord(
            run_id=run_id,
            task_manifest_hash=manifest_hash(manifest_for(config)),
            started_at=started,
            finished_at=datetime.now(UTC),
            num_values=num_values,
            config=config.model_dump(mode="json", by_alias=True),
        ).write(output)
        if is_encrypted(result.arrays):
            chunks: dict[str, Any] = {k: v.numpy() for k, v in result.arrays.items()}
            np.savez(output / FINAL_AGGREGATE_FILE, **chunks)
        else:
            state = result.arrays.to_torch_state_dict()
            arrays: dict[str, Any] = {k: v.numpy() for k, v in state.items()}
            np.savez(output / FINAL_MODEL_FILE, **arrays)
        logger.info("wrote %s and %s to %s", HISTORY_FILE, FINAL_MODEL_FILE, output)
        if config.dp and config.calibration is not CalibrationName.NONE:
            if config.dp_noise_shares > 1:
                record = calibrate_encrypted(strategy, config, output)
            else:
                record = calibrate(strategy.history, config.min_contributors)
            record.write(output)
            if record.skipped:
                strategy.history.round(config.num_server_rounds).failures.append(
                    f"calibration: {record.skipped}"
                )
                strategy.history.write(output / HISTORY_FILE)
    progress.finished()


def calibrate(history: FederationHistory, min_contributors: int) -> CalibrationRecord:
    """The intercept shift from the last round's calibration sums (or why there is none)."""
    from countyfl.privacy.calibration import intercept_shift, sums_of

    rounds = sorted(history.rounds)
    replies = history.rounds[rounds[-1]].evaluate.values() if rounds else []
    sums = [s for s in map(sums_of, replies) if s is not None]
    try:
        shift = intercept_shift(sums, min_contributors)
    except ValueError as error:
        return CalibrationRecord(contributors=len(sums), skipped=f"no shift applied: {error}")
    return CalibrationRecord(**dataclasses.asdict(shift))


def calibrate_encrypted(
    strategy: RecordingStrategy, config: RunConfig, output: Path
) -> CalibrationRecord:
    """Distributed noise: add the last round's encrypted calibration sums with the public
    context and keep their sum for the key holder who publishes (or say why there is none).

    The county never reads a sum: it only adds ciphertexts, and only if at least
    min-contributors sites sent a valid one (their shares of the noise add up only then).
    A reply whose row count or ciphertext is malformed is left out and recorded.
    """
    from countyfl.privacy.calibration import MAX_SUM, check_encrypted_sums, sum_encrypted_sums
    from countyfl.privacy.he.keys import load_public_context

    rounds = sorted(strategy.history.rounds)
    if not rounds:
        return CalibrationRecord(encrypted=True, skipped="no shift applied: no round ran")
    record = strategy.history.rounds[rounds[-1]]
    try:
        public = load_public_context(Path(config.he_public_context))
    except CountyflError as error:
        return CalibrationRecord(encrypted=True, skipped=f"no shift applied: {error}")
    valid: list[bytes] = []
    rows = 0.0
    # Only the last round's sums are of the final model: a node's earlier ones are stale.
    sent = strategy.calibration_ciphertexts if strategy.calibration_round == rounds[-1] else {}
    for partition_id, ciphertext in sorted(sent.items()):
        count = record.evaluate.get(partition_id, {}).get(protocol.CALIBRATION_ROWS)
        name = record.institutions.get(partition_id, f"partition {partition_id}")
        if count is None or not math.isfinite(count) or not 1 <= count <= MAX_SUM:
            record.failures.append(
                f"calibration: {name}: encrypted sums without a valid row count (left out)"
            )
            continue
        try:
            check_encrypted_sums(public, ciphertext)
        except ValueError as error:
            record.failures.append(f"calibration: {name}: {error} (left out)")
            continue
        valid.append(ciphertext)
        rows += float(count)
    if len(valid) < config.min_contributors:
        return CalibrationRecord(
            contributors=len(valid),
            encrypted=True,
            skipped=(
                f"no shift applied: {len(valid)} institution(s) sent valid encrypted "
                f"calibration sums; the task's minimum is {config.min_contributors} "
                "contributors, so nothing was added or decrypted"
            ),
        )
    try:
        total = sum_encrypted_sums(public, valid)
    except (ValueError, RuntimeError, TypeError) as error:  # TenSEAL's mismatched vectors
        return CalibrationRecord(
            contributors=len(valid), encrypted=True, skipped=f"no shift applied: {error}"
        )
    write_file(output / CALIBRATION_AGGREGATE_FILE, total, replace=True)
    return CalibrationRecord(contributors=len(valid), rows=rows, encrypted=True)


def _write_history(
    history: FederationHistory,
    output: Path,
    on_round_end: RoundCallback | None,
    server_round: int,
) -> None:
    history.write(output / HISTORY_FILE)
    if on_round_end is not None:
        on_round_end(server_round)


def make_server_app(
    config: RunConfig | None = None, on_round_end: RoundCallback | None = None
) -> ServerApp:
    """Build the ServerApp; ``config`` None means: parse it from Flower's run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None else parse_run_config(context.run_config)
        # Flower's deployment grid pulls replies every 3 s; ours as soon as they arrive,
        # and a round's evaluation goes out with the next round's training (rounds.py).
        from flwr.superlink.grid import InMemoryGrid  # the Simulation Engine's grid

        run_federation(
            PromptGrid(grid),
            cfg,
            on_round_end,
            run_id=str(context.run_id),
            simulated=isinstance(grid, InMemoryGrid),
        )

    return app


app = make_server_app()
