"""Intercept calibration: two noisy sums per site, paid for once a run, composed in the budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from countyfl.models import LogisticRegression
from countyfl.privacy.accounting import epsilon_of, gaussian_entry, poisson_sample_rate
from countyfl.privacy.budget import (
    BudgetExceededError,
    calibrated_noise,
    release_count,
    train_within_budget,
)
from countyfl.privacy.calibration import (
    MAX_SHIFT,
    SENSITIVITY,
    CalibrationSums,
    calibration_entry,
    intercept_shift,
    release_calibration,
    reserved_entries,
    sums_of,
    training_sums,
)
from countyfl.privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger
from countyfl.privacy.modes import (
    AccountantName,
    CalibrationName,
    DpRandomness,
    GradSampleMode,
    Mechanism,
)
from countyfl.privacy.randomness import round_generators
from countyfl.training.plan import TrainingPlan

RDP = AccountantName.RDP
DELTA = 1e-5
INSTITUTION = "village-3"
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

_rng = np.random.default_rng(7)
X = _rng.normal(size=(200, 3)).astype(np.float32)
Y = (_rng.random(200) < 0.2).astype(np.float32)


def _generators(server_round: int = 1, seed: int = 0):  # type: ignore[no-untyped-def]
    return round_generators(
        DpRandomness.SEEDED, seed=seed, institution=INSTITUTION, server_round=server_round
    )


def _release(ledger: PrivacyLedger, budget: Budget, model: torch.nn.Module, **kwargs):  # type: ignore[no-untyped-def]
    return release_calibration(
        institution_id=INSTITUTION,
        ledger=ledger,
        budget=budget,
        run_id=kwargs.get("run_id", "run-1"),
        server_round=3,
        model=model,
        x=X,
        y=Y,
        rows=kwargs.get("rows", 200),
        noise=kwargs.get("noise", 10.0),
        accountant=RDP,
        generator=kwargs.get("generator", _generators()(Mechanism.CALIBRATION)),
    )


def test_the_sums_are_the_gaussian_mechanism_of_sensitivity_sqrt2_paid_once_a_run(
    tmp_path: Path,
) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    budget = Budget(epsilon=5.0, delta=DELTA)
    model = LogisticRegression(3)
    positives, risk, spread = training_sums(model, X, Y)
    assert positives == Y.sum()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(X))).double()
    assert risk == pytest.approx(float(p.sum()))
    assert spread == pytest.approx(float((4 * p * (1 - p)).sum()))
    release = _release(ledger, budget, model)
    first = release.sums
    # The noise is the generator's draw, times the noise in records, rounded to a record.
    draws = torch.normal(
        0.0, 1.0, size=(3,), generator=_generators()(Mechanism.CALIBRATION), dtype=torch.float64
    )
    assert first.positives == round(positives + 10.0 * float(draws[0]))
    assert first.risk == round(risk + 10.0 * float(draws[1]))
    assert first.spread == round(spread + 10.0 * float(draws[2]))
    assert first.rows == 200
    # Paid for in the ledger, once: a second call in the run returns what was released.
    spends = [s for s in ledger.spends() if s.mechanism == Mechanism.CALIBRATION.value]
    assert len(spends) == 1
    assert spends[0].noise_multiplier == pytest.approx(10.0 / math.sqrt(3))
    assert ledger.history() == [calibration_entry(10.0)]
    assert ledger.released("run-1", Mechanism.CALIBRATION) == {
        "positives": first.positives,
        "risk": first.risk,
        "spread": first.spread,
    }
    assert release.epsilon_after == pytest.approx(ledger.spent_epsilon(DELTA, RDP))
    again = _release(ledger, budget, model, generator=_generators(seed=99)(Mechanism.CALIBRATION))
    assert again == release
    assert len(ledger.history()) == 1
    # A secret generator draws other noise (the server cannot predict it).
    other = _release(
        PrivacyLedger(tmp_path / "other" / LEDGER_FILE),
        budget,
        model,
        generator=_generators(seed=1)(Mechanism.CALIBRATION),
    ).sums
    assert (other.positives, other.risk) != (first.positives, first.risk)


def test_a_release_beyond_the_budget_is_refused_recorded_and_draws_nothing(
    tmp_path: Path,
) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    budget = Budget(epsilon=0.1, delta=DELTA)  # less than one release at noise 10 costs
    assert epsilon_of([calibration_entry(10.0)], DELTA, RDP) > budget.epsilon
    with pytest.raises(BudgetExceededError, match=INSTITUTION):
        _release(ledger, budget, LogisticRegression(3))
    assert ledger.history() == []
    assert ledger.refusal_count() == 1
    assert ledger.released("run-1", Mechanism.CALIBRATION) is None


def test_dp_sgd_leaves_room_for_the_sums_and_the_whole_run_stays_within_target(
    tmp_path: Path,
) -> None:
    """The accountant test: count + every DP-SGD step + the sums compose to <= target."""
    ledger = PrivacyLedger(tmp_path / INSTITUTION / LEDGER_FILE)
    target, count_noise, calibration_noise = 1.0, 20.0, 20.0
    budget = Budget(epsilon=10.0, delta=DELTA)
    reserved = reserved_entries(count_noise, CalibrationName.INTERCEPT, calibration_noise)
    assert reserved == (gaussian_entry(count_noise), calibration_entry(calibration_noise))
    assert reserved_entries(count_noise, CalibrationName.NONE, 1.0) == reserved[:1]
    model = LogisticRegression(3)
    spends = []
    for server_round in (1, 2):
        spends.append(
            train_within_budget(
                institution_id=INSTITUTION,
                ledger=ledger,
                budget=budget,
                run_id="run-1",
                server_round=server_round,
                model=model,
                x=X,
                y=Y,
                plan=TrainingPlan(local_steps=4, batch_size=16, learning_rate=0.1),
                target_epsilon=target,
                steps_per_run=8,
                max_grad_norm=1.0,
                accountant=RDP,
                grad_sample_mode=GradSampleMode.HOOKS,
                count_noise=count_noise,
                generators=_generators(server_round),
                reserved=reserved,
            )
        )
    before = epsilon_of(ledger.history(), DELTA, RDP)
    assert before < target  # room left for the sums
    count = release_count(
        institution_id=INSTITUTION,
        ledger=ledger,
        budget=budget,
        run_id="run-1",
        server_round=2,
        num_rows=len(X),
        count_noise=count_noise,
        accountant=RDP,
        generator=_generators(2)(Mechanism.NOISY_COUNT),
    )
    assert count == spends[0].num_examples  # the run's count, not released again
    release = _release(ledger, budget, model, rows=count, noise=calibration_noise)
    after = epsilon_of(ledger.history(), DELTA, RDP)
    assert release.epsilon_after == pytest.approx(after)
    assert before < after <= target * (1 + 1e-6)
    assert after >= 0.99 * target  # the calibration is tight, not a loose bound
    # Without the reservation the same DP-SGD would have had less noise: it is the sums'
    # room that was set aside.
    rate = poisson_sample_rate(count, 16)
    alone = calibrated_noise(target, DELTA, rate, 8, RDP, reserved[:1])
    assert spends[0].noise_multiplier > alone


def _bisected_shift(model: torch.nn.Module, prevalence: float) -> float:
    """The shift that makes the mean predicted risk the prevalence (the oracle)."""
    low, high = -MAX_SHIFT, MAX_SHIFT
    with torch.no_grad():
        logits = model(torch.from_numpy(X)).double()
    for _ in range(60):
        middle = (low + high) / 2
        if float(torch.sigmoid(logits + middle).mean()) < prevalence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def test_the_shift_brings_the_mean_predicted_risk_to_the_prevalence() -> None:
    # Noise-free sums of risks that do not spread: one Newton step in the logit-odds of the
    # mean risk is exactly logit(prevalence) - logit(mean risk) (slope 1).
    flat = [CalibrationSums(30, 12, 4 * 12 * 0.94, 200), CalibrationSums(15, 6, 4 * 6 * 0.94, 100)]
    shift = intercept_shift(flat, min_contributors=2)
    assert shift.shift == pytest.approx(math.log(0.15 / 0.85) - math.log(0.06 / 0.94))
    assert (shift.contributors, shift.positives, shift.risk, shift.rows) == (2, 45, 18, 300)
    # A model whose intercept is too low and whose risks spread: the shift from its exact
    # sums matches the bisected oracle, where the logit-odds of the means (slope 1) falls short.
    model = LogisticRegression(3)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[1.2, -0.8, 0.5]]))
        model.linear.bias.fill_(-3.0)
    positives, risk, spread = training_sums(model, X, Y)
    oracle = _bisected_shift(model, float(Y.mean()))
    newton = intercept_shift([CalibrationSums(positives, risk, spread, len(X))], 1).shift
    means_only = math.log(Y.mean() / (1 - Y.mean())) - math.log(risk / (len(X) - risk))
    assert abs(newton - oracle) < 0.5 * abs(means_only - oracle)

    def mean_risk(shift: float) -> float:
        with torch.no_grad():
            return float(torch.sigmoid(model(torch.from_numpy(X)) + shift).mean())

    assert abs(mean_risk(0.0) - Y.mean()) > 0.05  # far off before
    assert mean_risk(newton) == pytest.approx(float(Y.mean()), abs=0.02)
    assert abs(mean_risk(newton) - Y.mean()) < 0.5 * abs(mean_risk(means_only) - Y.mean())


def test_too_few_contributors_or_rows_give_no_shift_and_extremes_are_clipped() -> None:
    with pytest.raises(ValueError, match=r"1 institution.*minimum is 2"):
        intercept_shift([CalibrationSums(3, 1, 4, 20)], min_contributors=2)
    with pytest.raises(ValueError, match="at least 2"):
        intercept_shift([CalibrationSums(0, 0, 0, 1)], min_contributors=1)
    # Noisy sums may leave [0, rows]: the shares are pulled inside, the slope into
    # [MIN_SLOPE, 1], and the shift is bounded.
    far = intercept_shift([CalibrationSums(-40, 500, -30, 100)], 1)
    assert far.shift == -MAX_SHIFT
    assert intercept_shift([CalibrationSums(100, 0, 0, 100)], 1).shift == MAX_SHIFT
    # A noisy spread above its maximum cannot make the step smaller than the means' step.
    capped = intercept_shift([CalibrationSums(20, 10, 500, 100)], 1)
    assert capped.shift == pytest.approx(math.log(0.2 / 0.8) - math.log(0.1 / 0.9))


def test_a_reply_has_sums_only_if_all_three_are_there_and_finite() -> None:
    full = {
        "calibration-positives": 3.0,
        "calibration-risk": 2.0,
        "calibration-spread": 6.0,
        "calibration-rows": 20.0,
    }
    assert sums_of(full) == CalibrationSums(3.0, 2.0, 6.0, 20.0)
    assert sums_of({k: v for k, v in full.items() if k != "calibration-risk"}) is None
    assert sums_of({**full, "calibration-risk": math.nan}) is None
    assert sums_of({**full, "calibration-rows": 0.0}) is None
    # A bad reply's absurd sums are left out rather than overflow the county's sum.
    assert sums_of({**full, "calibration-positives": 1e300, "calibration-rows": 1e300}) is None
    assert pytest.approx(math.sqrt(3)) == SENSITIVITY
