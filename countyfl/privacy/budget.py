"""An institution's privacy budget check and spend around one round of DP training."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import nn

from countyfl.data.federated import FloatArray
from countyfl.errors import ConfigError, CountyflError
from countyfl.privacy.accounting import (
    HistoryEntry,
    epsilon_of,
    gaussian_entry,
    merge_history,
    noise_multiplier_for,
    poisson_sample_rate,
    project_epsilon,
    rdp_vectors_kept_in,
)
from countyfl.privacy.dp import PrivacyPlan, PrivateTrainOutcome, train_private
from countyfl.privacy.ledger import Budget, PrivacyLedger
from countyfl.privacy.modes import AccountantName, GradSampleMode, Mechanism
from countyfl.privacy.noise_memo import NoiseMemo, RdpVectorMemo
from countyfl.privacy.randomness import GeneratorFactory, secret_generators
from countyfl.privacy.weighting import LocalStepsPolicy, expected_batch, local_steps_for
from countyfl.training.plan import TrainingPlan

# The key under which the ledger keeps the noisy count a run released
NUM_EXAMPLES_RELEASE = "num-examples"


class BudgetExceededError(CountyflError):
    """A round would take an institution beyond its privacy budget."""


@dataclass(frozen=True)
class RoundSpend:
    """What one private round cost, and the noisy example count it used."""

    outcome: PrivateTrainOutcome
    noise_multiplier: float
    epsilon_after: float
    num_examples: int
    """The institution's noisy example count for this run (paid for in its ledger)."""
    local_steps: int
    """The DP-SGD steps this round ran by plan (the task's, or fewer at a small site)."""


@lru_cache(maxsize=256)
def calibrated_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName,
    before: tuple[HistoryEntry, ...] = (),
) -> float:
    """Cached :func:`noise_multiplier_for` (the search calls the accountant many times)."""
    return noise_multiplier_for(target_epsilon, delta, sample_rate, steps, accountant, before)


def noisy_count(num_rows: int, noise: float, generator: torch.Generator) -> int:
    """The Gaussian mechanism on a count: ``max(1, round(rows + N(0, noise^2)))``.

    Adding or removing one record changes the count by 1 (sensitivity 1), so this is the
    Gaussian mechanism with noise multiplier ``noise`` (:func:`gaussian_entry`). Rounding
    to an integer and the floor of 1 are post-processing; rounding also removes the low
    bits of the floating-point noise, which floating-point attacks read.
    """
    draw = float(torch.normal(0.0, 1.0, size=(1,), generator=generator)[0])
    return max(1, round(num_rows + noise * draw))


def check_fits(
    entry: HistoryEntry,
    *,
    institution_id: str,
    ledger: PrivacyLedger,
    budget: Budget,
    accountant: AccountantName,
    run_id: str,
    server_round: int,
) -> tuple[list[HistoryEntry], float]:
    """The ledger's history and the epsilon after ``entry``; refuses if that exceeds the budget.

    A refusal is recorded in the ledger and raised as :class:`BudgetExceededError`, which
    says who refuses, what is spent and what remains.
    """
    history = ledger.history()
    projected = project_epsilon(history, entry, budget.delta, accountant)
    if projected <= budget.epsilon:
        return history, projected
    spent = epsilon_of(history, budget.delta, accountant)
    ledger.record_refusal(
        run_id=run_id,
        server_round=server_round,
        spent_epsilon=spent,
        projected_epsilon=projected,
        budget_epsilon=budget.epsilon,
    )
    raise BudgetExceededError(
        f"institution {institution_id} refuses round {server_round} of run {run_id}: its "
        f"privacy budget is epsilon {budget.epsilon:g} at delta {budget.delta:g}; it has "
        f"spent {spent:.3f}, {max(budget.epsilon - spent, 0.0):.3f} remains, and this "
        f"round would bring it to {projected:.3f}"
    )


def release_once(
    *,
    mechanism: Mechanism,
    entry: HistoryEntry,
    draw: Callable[[], dict[str, float]],
    institution_id: str,
    ledger: PrivacyLedger,
    budget: Budget,
    run_id: str,
    server_round: int,
    accountant: AccountantName,
    noise_shares: int = 1,
) -> tuple[dict[str, float], float | None]:
    """A Gaussian release paid for once per run: what it released and the epsilon after it.

    A later call in the same run returns the first release, without drawing, and None for
    the epsilon (computing it is the caller's choice: it costs an accountant run). ``draw``
    reads the data and draws the noise, and runs only once the release fits the budget
    (:func:`check_fits` records a refusal and raises BudgetExceededError, so whether it fits
    depends on the ledger only, never on the data). The release is recorded in the ledger,
    in its own transaction, before anything derived from it is used or released.
    """
    released = ledger.released(run_id, mechanism)
    if released is not None:
        return dict(released), None
    history, projected = check_fits(
        entry,
        institution_id=institution_id,
        ledger=ledger,
        budget=budget,
        accountant=accountant,
        run_id=run_id,
        server_round=server_round,
    )
    values = draw()
    epsilon_after = ledger.record_spend(
        run_id=run_id,
        server_round=server_round,
        history_before=history,
        history_after=merge_history([*history, entry]),
        steps=1,
        sample_rate=1.0,
        noise_multiplier=entry[0],
        delta=budget.delta,
        accountant=accountant,
        epsilon_after=projected,
        mechanism=mechanism,
        released=values,
        noise_shares=noise_shares,
    )
    return values, epsilon_after


def release_count(
    *,
    institution_id: str,
    ledger: PrivacyLedger,
    budget: Budget,
    run_id: str,
    server_round: int,
    num_rows: int,
    count_noise: float,
    accountant: AccountantName,
    generator: torch.Generator,
) -> int:
    """The run's noisy example count: drawn and paid for once per run, then reused
    (:func:`release_once`)."""
    values, _ = release_once(
        mechanism=Mechanism.NOISY_COUNT,
        entry=gaussian_entry(count_noise),
        draw=lambda: {NUM_EXAMPLES_RELEASE: noisy_count(num_rows, count_noise, generator)},
        institution_id=institution_id,
        ledger=ledger,
        budget=budget,
        run_id=run_id,
        server_round=server_round,
        accountant=accountant,
    )
    return int(values[NUM_EXAMPLES_RELEASE])


def train_within_budget(
    *,
    institution_id: str,
    ledger: PrivacyLedger,
    budget: Budget,
    run_id: str,
    server_round: int,
    model: nn.Module,
    x: FloatArray,
    y: FloatArray,
    plan: TrainingPlan,
    target_epsilon: float,
    steps_per_run: int,
    max_grad_norm: float,
    accountant: AccountantName,
    grad_sample_mode: GradSampleMode,
    count_noise: float,
    generators: GeneratorFactory = secret_generators,
    noise_memo: NoiseMemo | None = None,
    steps_policy: LocalStepsPolicy = LocalStepsPolicy.FIXED,
    reserved: tuple[HistoryEntry, ...] | None = None,
    sample_rate: float | None = None,
    noise_shares: int = 1,
    calibration_delta: float | None = None,
) -> RoundSpend:
    """Release the run's noisy count, check this round against the budget, train, record.

    Everything a run releases is composed to ``target_epsilon``: the noisy example count
    (once per run, :func:`release_count`) and ``steps_per_run`` DP-SGD steps at the sample
    rate the sampler uses, 1 / ceil(noisy count / batch size). The sample rate, the
    divisor of each noisy sum and the noise multiplier are derived from the noisy count,
    never from the exact number of rows, so they are post-processing of an accounted
    release. If the epsilon after this round (composed with everything in the ledger,
    over every earlier run) would exceed the budget, nothing is trained, the refusal is
    recorded, and BudgetExceededError says who, how much is spent and how much remains.
    The spend is recorded in one transaction before the caller may release the update.
    ``noise_memo``: the site's calibrated noise multipliers, shared by its node's processes
    (deployment: each message is a new process, which would calibrate again).

    ``steps_policy`` EPOCH runs ``min(local steps, ceil(noisy count / batch))`` steps a
    round (:mod:`countyfl.privacy.weighting`), and the calibration composes exactly that
    schedule: ``steps_per_run / plan.local_steps`` rounds of that many steps.
    ``reserved``: every other release of the run, for the calibration to leave room for
    (default: the noisy count alone; :func:`countyfl.privacy.calibration.reserved_entries`).

    ``sample_rate``: the run's Poisson rate, the same at every site (None: from the noisy
    count and batch size); the divisor of each noisy sum is then the whole expected batch
    :func:`countyfl.privacy.weighting.expected_batch`. ``noise_shares`` > 1 is distributed
    noise: the noise multiplier ``sigma`` is calibrated and accounted as always, but this
    site draws only ``sigma / sqrt(noise_shares)``; the caller guarantees that only a sum
    of at least ``noise_shares`` such updates is ever decrypted (docs/privacy.md,
    "Distributed noise"). ``calibration_delta``: the delta the noise is calibrated for
    (None: the budget's); with distributed noise the run's, so that every site computes the
    same ``sigma``. The ledger always accounts with the budget's own delta.
    """
    if noise_shares < 1:
        raise ConfigError(f"noise shares {noise_shares} must be >= 1")
    if noise_shares > 1 and sample_rate is None:
        raise ConfigError("distributed noise needs the run's sample rate, the same at every site")
    memo_vectors = (
        nullcontext()
        if noise_memo is None
        else rdp_vectors_kept_in(RdpVectorMemo(noise_memo.folder.parent))
    )
    with memo_vectors:
        if len(x) == 0:
            raise ConfigError(
                f"institution {institution_id} has no training rows: nothing to train with "
                "differential privacy (check its data export)"
            )
        count = release_count(
            institution_id=institution_id,
            ledger=ledger,
            budget=budget,
            run_id=run_id,
            server_round=server_round,
            num_rows=len(x),
            count_noise=count_noise,
            accountant=accountant,
            generator=generators(Mechanism.NOISY_COUNT),
        )
        divisor: float
        if sample_rate is None:
            sample_rate = poisson_sample_rate(count, plan.batch_size)
            divisor = sample_rate * count
        else:
            divisor = expected_batch(count, sample_rate)
        if steps_per_run % plan.local_steps:
            raise ConfigError(
                f"steps per run {steps_per_run} is not a whole number of rounds of "
                f"{plan.local_steps} local steps"
            )
        local_steps = local_steps_for(steps_policy, plan.local_steps, count, plan.batch_size)
        steps_per_run = steps_per_run // plan.local_steps * local_steps
        plan = replace(plan, local_steps=local_steps)
        calibration = (
            target_epsilon,
            budget.delta if calibration_delta is None else calibration_delta,
            sample_rate,
            steps_per_run,
            accountant,
            reserved if reserved is not None else (gaussian_entry(count_noise),),
        )
        if noise_memo is None:
            noise = calibrated_noise(*calibration)
        else:
            noise = noise_memo.calibrate(
                [*calibration[:4], accountant.value, [list(e) for e in calibration[5]]],
                lambda: calibrated_noise(*calibration),
            )
        history, projected = check_fits(
            (noise, sample_rate, plan.local_steps),
            institution_id=institution_id,
            ledger=ledger,
            budget=budget,
            accountant=accountant,
            run_id=run_id,
            server_round=server_round,
        )
        outcome = train_private(
            model,
            x,
            y,
            plan,
            PrivacyPlan(
                noise,
                max_grad_norm,
                accountant,
                grad_sample_mode,
                sample_rate=sample_rate,
                expected_batch_size=divisor,
                noise_shares=noise_shares,
            ),
            history,
            generator=generators(Mechanism.DP_SGD),
        )
        # The projection was computed for exactly this history unless Opacus ran another
        # number of steps than planned; then the ledger recomputes it.
        planned = merge_history([*history, (noise, sample_rate, plan.local_steps)])
        same = merge_history(outcome.history_after) == planned
        epsilon_after = ledger.record_spend(
            run_id=run_id,
            server_round=server_round,
            history_before=history,
            history_after=outcome.history_after,
            steps=outcome.steps,
            sample_rate=outcome.sample_rate,
            noise_multiplier=noise,
            delta=budget.delta,
            accountant=accountant,
            epsilon_after=projected if same else None,
            noise_shares=noise_shares,
        )
        return RoundSpend(outcome, noise, epsilon_after, count, local_steps)
