"""The per-institution budget: rounds within it train and are recorded; others are refused.

The property test runs random schedules of runs, rounds and restarts (the ledger file
reopened by a new object, as a restarted site would) against random budgets, with the RDP
accountant (PRV's calls are too slow for many examples).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings

from countyfl.errors import ConfigError
from countyfl.models import LogisticRegression
from countyfl.privacy import budget as budget_module
from countyfl.privacy.accounting import (
    epsilon_of,
    gaussian_entry,
    merge_history,
    noise_multiplier_for,
    poisson_sample_rate,
)
from countyfl.privacy.budget import BudgetExceededError, calibrated_noise, train_within_budget
from countyfl.privacy.ledger import LEDGER_FILE, Budget, LedgerError, PrivacyLedger
from countyfl.privacy.modes import AccountantName, DpRandomness, GradSampleMode, Mechanism
from countyfl.privacy.randomness import round_generators
from countyfl.training.local import get_weights
from countyfl.training.plan import TrainingPlan

DELTA = 1e-5
RDP = AccountantName.RDP
# Noise on the example count: large, so that the count costs little of these small budgets
COUNT_NOISE = 50.0
COUNT = gaussian_entry(COUNT_NOISE)
ROWS, BATCH = 40, 8
INSTITUTION = "hospital-7"
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

_rng = np.random.default_rng(0)
X = _rng.normal(size=(ROWS, 3)).astype(np.float32)
Y = (_rng.random(ROWS) < 0.5).astype(np.float32)
SPENT_AND_REMAINING = re.compile(r"spent ([0-9.]+), ([0-9.]+) remains")


def _round(
    ledger: PrivacyLedger,
    model: torch.nn.Module,
    budget: Budget,
    *,
    run_id: str,
    server_round: int,
    local_steps: int,
    target_epsilon: float,
    steps_per_run: int,
    seed: int = 0,
):  # type: ignore[no-untyped-def]
    return train_within_budget(
        institution_id=INSTITUTION,
        ledger=ledger,
        budget=budget,
        run_id=run_id,
        server_round=server_round,
        model=model,
        x=X,
        y=Y,
        plan=TrainingPlan(local_steps=local_steps, batch_size=BATCH, learning_rate=0.1),
        target_epsilon=target_epsilon,
        steps_per_run=steps_per_run,
        max_grad_norm=1.0,
        accountant=RDP,
        grad_sample_mode=GradSampleMode.HOOKS,
        count_noise=COUNT_NOISE,
        generators=round_generators(
            DpRandomness.SEEDED, seed=seed, institution=INSTITUTION, server_round=server_round
        ),
    )


def _sgd_steps(history: list) -> int:
    """DP-SGD steps in a history (every entry but the counts' Gaussian mechanisms)."""
    return sum(steps for *mechanism, steps in history if tuple(mechanism) != COUNT[:2])
    return sum(steps for _, _, steps in history)


def _check_refusal_message(message: str, spent: float, budget: Budget) -> None:
    assert INSTITUTION in message
    match = SPENT_AND_REMAINING.search(message)
    assert match, message
    assert float(match.group(1)) == pytest.approx(spent, abs=1e-3)
    assert float(match.group(2)) == pytest.approx(max(budget.epsilon - spent, 0.0), abs=1e-3)


def test_calibrated_noise_is_the_calibration() -> None:
    rate = poisson_sample_rate(ROWS, BATCH)
    assert calibrated_noise(1.0, DELTA, rate, 10, RDP, (COUNT,)) == noise_multiplier_for(
        1.0, DELTA, rate, 10, RDP, [COUNT]
    )


def test_rounds_fit_until_the_budget_is_spent_then_are_refused_across_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / INSTITUTION / LEDGER_FILE
    budget = Budget(epsilon=1.0, delta=DELTA)
    args = {"local_steps": 5, "target_epsilon": 1.0, "steps_per_run": 10}
    model = LogisticRegression(3)
    first = _round(PrivacyLedger(path), model, budget, run_id="run-1", server_round=1, **args)
    second = _round(PrivacyLedger(path), model, budget, run_id="run-1", server_round=2, **args)
    assert 0 < first.epsilon_after < second.epsilon_after <= budget.epsilon
    # Calibrated on the count and the 10 steps of the run: the run spends the budget
    # (almost) all, at the sample rate of the noisy count the run released once.
    assert second.epsilon_after >= 0.99 * budget.epsilon
    assert first.noise_multiplier == second.noise_multiplier
    assert first.num_examples == second.num_examples
    released = PrivacyLedger(path).released("run-1", Mechanism.NOISY_COUNT)
    assert released == {"num-examples": first.num_examples}
    rate = poisson_sample_rate(first.num_examples, BATCH)
    assert first.outcome.sample_rate == rate
    assert second.outcome.history_after == [COUNT, (first.noise_multiplier, rate, 10)]

    # A new run, a restarted site: the ledger remembers, and the next round is refused.
    # Its count still fits the last sliver of the budget and is paid for; no step is.
    ledger = PrivacyLedger(path)
    snapshot = (ledger.history(), ledger.spends())
    assert epsilon_of([*snapshot[0], COUNT], DELTA, RDP) <= budget.epsilon
    fresh = LogisticRegression(3)
    weights = get_weights(fresh)
    with pytest.raises(BudgetExceededError) as refused:
        _round(ledger, fresh, budget, run_id="run-2", server_round=1, **args)
    reopened = PrivacyLedger(path)
    assert reopened.history() == [*snapshot[0], COUNT]
    assert [s.mechanism for s in reopened.spends()[len(snapshot[1]) :]] == ["noisy-count"]
    spent = epsilon_of(reopened.history(), DELTA, RDP)
    _check_refusal_message(str(refused.value), spent, budget)
    assert "run-2" in str(refused.value)
    assert reopened.refusal_count() == 1
    # A third run finds not even room for its count: refused with nothing released.
    with pytest.raises(BudgetExceededError):
        _round(reopened, fresh, budget, run_id="run-3", server_round=1, **args)
    assert PrivacyLedger(path).history() == [*snapshot[0], COUNT]
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(fresh), weights, strict=True))


def test_a_round_that_alone_exceeds_the_budget_is_refused_after_paying_for_its_count(
    tmp_path: Path,
) -> None:
    # The count fits the budget, the round does not: the count was released (the refusal
    # depends on the sample rate it sets) and stays paid for; nothing else is.
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    budget = Budget(epsilon=0.3, delta=DELTA)
    assert epsilon_of([COUNT], DELTA, RDP) < budget.epsilon
    model = LogisticRegression(3)
    weights = get_weights(model)
    with pytest.raises(BudgetExceededError) as refused:
        _round(
            ledger,
            model,
            budget,
            run_id="run-1",
            server_round=1,
            local_steps=10,
            target_epsilon=1.0,
            steps_per_run=10,
        )
    spent = epsilon_of([COUNT], DELTA, RDP)
    _check_refusal_message(str(refused.value), spent, budget)
    assert ledger.history() == [COUNT]
    assert [s.mechanism for s in ledger.spends()] == ["noisy-count"]
    assert ledger.refusal_count() == 1
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(model), weights, strict=True))


def test_a_count_beyond_the_budget_is_refused_and_nothing_is_drawn(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    budget = Budget(epsilon=0.05, delta=DELTA)
    assert epsilon_of([COUNT], DELTA, RDP) > budget.epsilon
    drawn: list[Mechanism] = []

    def watching(mechanism: Mechanism) -> torch.Generator:
        drawn.append(mechanism)
        return torch.Generator().manual_seed(0)

    with pytest.raises(BudgetExceededError):
        train_within_budget(
            institution_id=INSTITUTION,
            ledger=ledger,
            budget=budget,
            run_id="run-1",
            server_round=1,
            model=LogisticRegression(3),
            x=X,
            y=Y,
            plan=TrainingPlan(local_steps=2, batch_size=BATCH, learning_rate=0.1),
            target_epsilon=0.04,
            steps_per_run=10,
            max_grad_norm=1.0,
            accountant=RDP,
            grad_sample_mode=GradSampleMode.HOOKS,
            count_noise=COUNT_NOISE,
            generators=watching,
        )
    assert ledger.history() == [] and ledger.refusal_count() == 1
    # The generator was handed out, but the refusal came before any draw from it.
    assert drawn in ([], [Mechanism.NOISY_COUNT])


schedules = st.lists(
    # One run: for each of its rounds, whether the site restarts (reopens the ledger) first.
    st.lists(st.booleans(), min_size=1, max_size=3),
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    budget_epsilon=st.floats(min_value=0.2, max_value=2.5),
    target_epsilon=st.sampled_from([0.5, 1.0]),
    steps_per_run=st.sampled_from([10, 20]),
    local_steps=st.sampled_from([2, 5]),
    schedule=schedules,
)
def test_an_institution_never_spends_beyond_its_budget(
    budget_epsilon: float,
    target_epsilon: float,
    steps_per_run: int,
    local_steps: int,
    schedule: list[list[bool]],
) -> None:
    budget = Budget(epsilon=budget_epsilon, delta=DELTA)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / INSTITUTION / LEDGER_FILE
        ledger = PrivacyLedger(path)
        for run, restarts in enumerate(schedule, start=1):
            model = LogisticRegression(3)
            for server_round, restart in enumerate(restarts, start=1):
                if restart:
                    ledger = PrivacyLedger(path)
                history = ledger.history()
                spends = ledger.spends()
                refusals = ledger.refusal_count()
                spent_before = epsilon_of(history, DELTA, RDP)
                weights = get_weights(model)
                try:
                    spend = _round(
                        ledger,
                        model,
                        budget,
                        run_id=f"run-{run}",
                        server_round=server_round,
                        local_steps=local_steps,
                        target_epsilon=target_epsilon,
                        steps_per_run=steps_per_run,
                    )
                except BudgetExceededError as refused:
                    event("a round was refused")
                    # Refused: nothing trained, no DP-SGD step spent, the refusal recorded;
                    # at most the run's count was paid for (it decided the sample rate).
                    after = ledger.history()
                    paid_count = len(ledger.spends()) == len(spends) + 1
                    assert merge_history(after) == merge_history(
                        [*history, COUNT] if paid_count else history
                    )
                    assert all(s.mechanism == "noisy-count" for s in ledger.spends()[len(spends) :])
                    assert ledger.refusal_count() == refusals + 1
                    assert all(
                        np.array_equal(a, b)
                        for a, b in zip(get_weights(model), weights, strict=True)
                    )
                    _check_refusal_message(str(refused), epsilon_of(after, DELTA, RDP), budget)
                    # And rightly refused: the count, or the round, would have gone over.
                    released = ledger.released(f"run-{run}", Mechanism.NOISY_COUNT)
                    if released is None:
                        assert epsilon_of([*history, COUNT], DELTA, RDP) > budget.epsilon
                    else:
                        rate = poisson_sample_rate(int(released["num-examples"]), BATCH)
                        noise = calibrated_noise(
                            target_epsilon, DELTA, rate, steps_per_run, RDP, (COUNT,)
                        )
                        would_be = epsilon_of([*after, (noise, rate, local_steps)], DELTA, RDP)
                        assert would_be > budget.epsilon
                else:
                    event("a round trained")
                    after = ledger.history()
                    assert after == spend.outcome.history_after
                    assert _sgd_steps(after) == _sgd_steps(history) + local_steps
                    new = [s.mechanism for s in ledger.spends()[len(spends) :]]
                    assert new in (["dp-sgd"], ["noisy-count", "dp-sgd"])
                    assert ledger.refusal_count() == refusals
                    spent = epsilon_of(after, DELTA, RDP)
                    assert spend.epsilon_after == pytest.approx(spent, rel=1e-12)
                    assert spent > spent_before
                    assert spent <= budget.epsilon * (1 + 1e-12)
        final = PrivacyLedger(path)
        assert final.spent_epsilon(DELTA, RDP) <= budget.epsilon * (1 + 1e-12)
        trained = sum(s.mechanism == "dp-sgd" for s in final.spends())
        assert trained + final.refusal_count() == sum(map(len, schedule))


def test_a_spend_recorded_elsewhere_during_training_voids_this_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes train for one institution at once: the one that records second must
    # not release its update, and its spend is not recorded.
    path = tmp_path / LEDGER_FILE
    real_train = budget_module.train_private
    other = [COUNT, (9.0, 0.2, 3)]

    def train_while_another_process_spends(*args, **kwargs):  # type: ignore[no-untyped-def]
        outcome = real_train(*args, **kwargs)
        PrivacyLedger(path).record_spend(
            run_id="other-process",
            server_round=1,
            history_before=[COUNT],
            history_after=other,
            steps=3,
            sample_rate=0.2,
            noise_multiplier=9.0,
            delta=DELTA,
            accountant=RDP,
        )
        return outcome

    monkeypatch.setattr(budget_module, "train_private", train_while_another_process_spends)
    with pytest.raises(LedgerError, match="must not be released"):
        _round(
            PrivacyLedger(path),
            LogisticRegression(3),
            Budget(epsilon=5.0, delta=DELTA),
            run_id="run-1",
            server_round=1,
            local_steps=2,
            target_epsilon=1.0,
            steps_per_run=10,
        )
    ledger = PrivacyLedger(path)
    # The run's count was paid for before training; the round's steps were not recorded.
    assert ledger.history() == other
    assert [(s.run_id, s.mechanism) for s in ledger.spends()] == [
        ("run-1", "noisy-count"),
        ("other-process", "dp-sgd"),
    ]


def test_no_rows_is_a_config_error_and_spends_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    with pytest.raises(ConfigError):
        train_within_budget(
            institution_id=INSTITUTION,
            ledger=ledger,
            budget=Budget(epsilon=1.0, delta=DELTA),
            run_id="run-1",
            server_round=1,
            model=LogisticRegression(3),
            x=X[:0],
            y=Y[:0],
            plan=TrainingPlan(local_steps=2, batch_size=BATCH, learning_rate=0.1),
            target_epsilon=1.0,
            steps_per_run=10,
            max_grad_norm=1.0,
            accountant=RDP,
            grad_sample_mode=GradSampleMode.HOOKS,
            count_noise=COUNT_NOISE,
        )
    assert ledger.history() == []
    assert ledger.spends() == []
