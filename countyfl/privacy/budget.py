"""An institution's privacy budget check and spend around one round of DP training."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from torch import nn

from countyfl.clients.training import TrainingPlan
from countyfl.data.federated import FloatArray
from countyfl.errors import CountyflError
from countyfl.privacy.accounting import (
    AccountantName,
    epsilon_of,
    merge_history,
    noise_multiplier_for,
    poisson_sample_rate,
    project_epsilon,
)
from countyfl.privacy.dp import GradSampleMode, PrivacyPlan, PrivateTrainOutcome, train_private
from countyfl.privacy.ledger import Budget, PrivacyLedger


class BudgetExceededError(CountyflError):
    """A round would take an institution beyond its privacy budget."""


@dataclass(frozen=True)
class RoundSpend:
    """What one private round cost."""

    outcome: PrivateTrainOutcome
    noise_multiplier: float
    epsilon_after: float


@lru_cache(maxsize=64)
def calibrated_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: AccountantName
) -> float:
    """Cached :func:`noise_multiplier_for` (the search calls the accountant many times)."""
    return noise_multiplier_for(target_epsilon, delta, sample_rate, steps, accountant)


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
) -> RoundSpend:
    """Check the projected epsilon of this round against the budget, train, record.

    The noise multiplier is calibrated so that ``steps_per_run`` steps at this
    institution's own sample rate spend ``target_epsilon``. If the epsilon after this
    round (composed with everything in the ledger, over every earlier run) would exceed
    the budget, nothing is trained, the refusal is recorded, and BudgetExceededError says
    who, how much is spent and how much remains. The spend is recorded in one
    transaction before the caller may release the update.
    """
    sample_rate = poisson_sample_rate(len(x), plan.batch_size)
    noise = calibrated_noise(target_epsilon, budget.delta, sample_rate, steps_per_run, accountant)
    history = ledger.history()
    projected = project_epsilon(
        history, (noise, sample_rate, plan.local_steps), budget.delta, accountant
    )
    if projected > budget.epsilon:
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
    outcome = train_private(
        model,
        x,
        y,
        plan,
        PrivacyPlan(noise, max_grad_norm, accountant, grad_sample_mode),
        history,
    )
    # The projection was computed for exactly this history unless Opacus ran another
    # number of steps or sample rate than planned; then the ledger recomputes it.
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
    )
    return RoundSpend(outcome, noise, epsilon_after)
