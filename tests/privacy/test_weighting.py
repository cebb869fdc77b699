"""Aggregation weights and small sites' local steps: the weights, and the accounting of them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from countyfl.errors import ConfigError
from countyfl.models import LogisticRegression
from countyfl.privacy.accounting import epsilon_of, gaussian_entry, poisson_sample_rate
from countyfl.privacy.budget import calibrated_noise, train_within_budget
from countyfl.privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger
from countyfl.privacy.modes import AccountantName, DpRandomness, GradSampleMode
from countyfl.privacy.randomness import round_generators
from countyfl.privacy.weighting import (
    AggregationWeight,
    LocalStepsPolicy,
    aggregation_weight,
    effective_examples,
    local_steps_for,
)
from countyfl.training.plan import TrainingPlan

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
RDP = AccountantName.RDP
DELTA = 1e-5


def test_without_noise_the_weight_is_the_count() -> None:
    assert effective_examples(890, 0.0, 32 / 890, 20, 15) == pytest.approx(890)
    assert aggregation_weight(AggregationWeight.NOISE_AWARE, 890, 0.0, 0.036, 20, 15) == 890


def test_the_weight_is_the_inverse_variance_in_examples() -> None:
    count, noise, rate, steps, values = 111, 9.0, 0.25, 20, 15
    batch = rate * count
    expected = 1 / (1 / count + values * noise**2 / (steps * batch**2))
    assert effective_examples(count, noise, rate, steps, values) == pytest.approx(expected)


def test_a_noisy_village_weighs_less_against_the_hospital_than_its_rows() -> None:
    # The county hospital (890 rows, noise 1) against a village clinic (111 rows, noise 9):
    # FedAvg gives the village 1/8 of the hospital's weight, the noise-aware weight far less.
    hospital = aggregation_weight(AggregationWeight.NOISE_AWARE, 890, 1.0, 1 / 28, 20, 15)
    village = aggregation_weight(AggregationWeight.NOISE_AWARE, 111, 9.0, 1 / 4, 20, 15)
    assert village / hospital < 0.5 * 111 / 890
    assert aggregation_weight(AggregationWeight.EXAMPLES, 111, 9.0, 1 / 4, 20, 15) == 111
    # More noise, less weight; never below 1 (an update always counts a little).
    weights = [effective_examples(111, s, 0.25, 20, 15) for s in (0.5, 1, 5, 20, 100)]
    assert weights == sorted(weights, reverse=True)
    assert aggregation_weight(AggregationWeight.NOISE_AWARE, 3, 2000.0, 1.0, 1, 15) == 1


@pytest.mark.parametrize(
    "args",
    [(0, 1.0, 0.5, 1, 15), (10, -1.0, 0.5, 1, 15), (10, 1.0, 0.0, 1, 15), (10, 1.0, 1.5, 1, 15)],
)
def test_bad_inputs_are_config_errors(args: tuple[int, float, float, int, int]) -> None:
    with pytest.raises(ConfigError):
        effective_examples(*args)


def test_the_epoch_policy_runs_at_most_one_pass_over_the_count() -> None:
    assert local_steps_for(LocalStepsPolicy.FIXED, 20, 111, 32) == 20
    assert local_steps_for(LocalStepsPolicy.EPOCH, 20, 111, 32) == 4
    assert local_steps_for(LocalStepsPolicy.EPOCH, 20, 890, 32) == 20
    assert local_steps_for(LocalStepsPolicy.EPOCH, 20, 1, 32) == 1
    with pytest.raises(ConfigError, match="count 0"):
        local_steps_for(LocalStepsPolicy.EPOCH, 20, 0, 32)


def test_fewer_steps_at_a_small_site_are_accounted_and_need_less_noise(tmp_path: Path) -> None:
    """A whole run under the epoch policy composes to the target, with its real steps."""
    rows, batch, local_steps, rounds, count_noise = 40, 8, 10, 3, 4.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = (rng.random(rows) < 0.5).astype(np.float32)
    budget = Budget(epsilon=4.0, delta=DELTA)
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    model = LogisticRegression(3)
    spends = [
        train_within_budget(
            institution_id="village-1",
            ledger=ledger,
            budget=budget,
            run_id="run-1",
            server_round=server_round,
            model=model,
            x=x,
            y=y,
            plan=TrainingPlan(local_steps=local_steps, batch_size=batch, learning_rate=0.1),
            target_epsilon=3.0,
            steps_per_run=local_steps * rounds,
            max_grad_norm=1.0,
            accountant=RDP,
            grad_sample_mode=GradSampleMode.HOOKS,
            count_noise=count_noise,
            generators=round_generators(
                DpRandomness.SEEDED, seed=1, institution="village-1", server_round=server_round
            ),
            steps_policy=LocalStepsPolicy.EPOCH,
        )
        for server_round in range(1, rounds + 1)
    ]
    count = spends[0].num_examples
    steps = math.ceil(count / batch)
    assert steps < local_steps  # the noisy count of 40 rows: about 5 batches of 8
    assert all(s.local_steps == steps for s in spends)
    rate = poisson_sample_rate(count, batch)
    # The ledger holds the count and rounds x steps at the calibrated noise, and the run
    # spends its target (not more, nearly all).
    history = PrivacyLedger(tmp_path / LEDGER_FILE).history()
    assert history == [gaussian_entry(count_noise), (spends[0].noise_multiplier, rate, steps * 3)]
    spent = epsilon_of(history, DELTA, RDP)
    assert 0.99 * 3.0 <= spent <= 3.0 + 1e-6
    assert spends[-1].epsilon_after == pytest.approx(spent)
    # The calibration is that of the shorter schedule: less noise than 10 steps a round.
    fixed = calibrated_noise(
        3.0, DELTA, rate, local_steps * rounds, RDP, (gaussian_entry(count_noise),)
    )
    assert spends[0].noise_multiplier < fixed
