"""Privacy accounting: restored accountants equal continuous ones; noise calibration.

Oracle (as Opacus tests its own accountants): the epsilon of an accountant restored round
by round from the previous round's state equals the epsilon of one accountant that took
every step. Checked with Opacus directly, through ``train_private`` and through
``PrivacyLedger``. PRV calls cost 0.1-1 s each, so PRV appears only where it matters.
"""

from __future__ import annotations

import io
import math
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from countyfl.data import fed_heart_disease
from countyfl.errors import ConfigError
from countyfl.models import LogisticRegression
from countyfl.privacy.accounting import (
    epsilon_of,
    gaussian_entry,
    make_accountant,
    noise_multiplier_for,
    poisson_sample_rate,
    project_epsilon,
)
from countyfl.privacy.dp import PrivacyPlan, train_private
from countyfl.privacy.ledger import PrivacyLedger
from countyfl.privacy.modes import AccountantName
from countyfl.training.plan import TrainingPlan

DELTA = 1e-5
RDP = AccountantName.RDP
pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
]


def _opacus_accountant(name: AccountantName) -> IAccountant:
    return PRVAccountant() if name is AccountantName.PRV else RDPAccountant()


def _rows(rows: int = 40, features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (rng.random(rows) < 0.5).astype(np.float32)
    return x, y


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# --- (a) Opacus directly: a PrivacyEngine per round, state restored from a state_dict ------


@pytest.mark.parametrize("name", list(AccountantName))
def test_opacus_engine_per_round_restored_from_state_dict_equals_one_continuous_accountant(
    name: AccountantName,
) -> None:
    torch.manual_seed(0)
    x, y = _rows()
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    model = LogisticRegression(3)
    # A different noise in the last round: histories hold merged and separate entries.
    schedule = [(1.5, 6), (1.5, 6), (2.5, 6)]
    saved: bytes | None = None
    continuous = _opacus_accountant(name)
    for noise, steps in schedule:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=name.value)
        if saved is not None:
            # Persisted as bytes and read back with torch.load's weights_only default.
            engine.accountant.load_state_dict(torch.load(io.BytesIO(saved)))
        private_model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(dataset, batch_size=8),
            noise_multiplier=noise,
            max_grad_norm=1.0,
            poisson_sampling=True,
        )
        taken = 0
        while taken < steps:
            for features, labels in loader:
                optimizer.zero_grad()
                if len(labels):
                    nn.functional.binary_cross_entropy_with_logits(
                        private_model(features), labels
                    ).backward()
                else:
                    private_model(features).sum().backward()
                optimizer.step()
                continuous.step(noise_multiplier=noise, sample_rate=loader.sample_rate)
                taken += 1
                if taken == steps:
                    break
        buffer = io.BytesIO()
        torch.save(engine.accountant.state_dict(), buffer)
        saved = buffer.getvalue()
        private_model._close()
        # The restored engine carries every earlier round, as the continuous one does.
        assert engine.accountant.history == continuous.history
    assert continuous.history == [(1.5, 0.2, 12), (2.5, 0.2, 6)]
    restored = engine.accountant.get_epsilon(delta=DELTA)
    assert _close(restored, continuous.get_epsilon(delta=DELTA))


# --- (b) through countyfl's train_private --------------------------------------------------


@pytest.mark.parametrize("name", list(AccountantName))
def test_train_private_rounds_fed_their_history_equal_one_continuous_accountant(
    name: AccountantName,
) -> None:
    torch.manual_seed(1)
    x, y = _rows(rows=50)
    batch, noise, local_steps = 8, 1.3, 7
    model = LogisticRegression(3)
    history: list = []
    for _ in range(3):
        outcome = train_private(
            model,
            x,
            y,
            TrainingPlan(local_steps=local_steps, batch_size=batch, learning_rate=0.1),
            PrivacyPlan(noise_multiplier=noise, max_grad_norm=1.0, accountant=name),
            history,
        )
        assert outcome.steps == local_steps
        history = outcome.history_after
    continuous = _opacus_accountant(name)
    for _ in range(3 * local_steps):
        continuous.step(noise_multiplier=noise, sample_rate=poisson_sample_rate(50, batch))
    restored = epsilon_of(history, DELTA, name)
    assert _close(restored, continuous.get_epsilon(delta=DELTA))
    one_round = epsilon_of([(noise, poisson_sample_rate(50, batch), local_steps)], DELTA, name)
    assert restored > one_round


# --- (c) through the ledger, reopened between rounds ---------------------------------------


def test_ledger_reopened_every_round_spends_what_one_continuous_accountant_spends(
    tmp_path,
) -> None:
    # RDP only: record_spend computes epsilon every round, and PRV's is slow.
    name = AccountantName.RDP
    torch.manual_seed(2)
    x, y = _rows(rows=40)
    path = tmp_path / "site" / "privacy-ledger.sqlite"
    model = LogisticRegression(3)
    noises = [1.2, 1.2, 1.8]
    continuous = _opacus_accountant(name)
    returned = []
    for server_round, noise in enumerate(noises, start=1):
        ledger = PrivacyLedger(path)  # a new object (as in a new process) every round
        before = ledger.history()
        outcome = train_private(
            model,
            x,
            y,
            TrainingPlan(local_steps=5, batch_size=10, learning_rate=0.1),
            PrivacyPlan(noise_multiplier=noise, max_grad_norm=1.0, accountant=name),
            before,
        )
        returned.append(
            ledger.record_spend(
                run_id="run-1",
                server_round=server_round,
                history_before=before,
                history_after=outcome.history_after,
                steps=outcome.steps,
                sample_rate=outcome.sample_rate,
                noise_multiplier=noise,
                delta=DELTA,
                accountant=name,
            )
        )
        for _ in range(outcome.steps):
            continuous.step(noise_multiplier=noise, sample_rate=poisson_sample_rate(40, 10))
    expected = continuous.get_epsilon(delta=DELTA)
    reopened = PrivacyLedger(path)
    assert _close(reopened.spent_epsilon(DELTA, name), expected)
    assert _close(returned[-1], expected)
    assert returned[0] < returned[1] < returned[2]
    assert [s.epsilon_after for s in reopened.spends()] == returned
    assert reopened.history() == [tuple(e) for e in continuous.history]


# --- pure functions --------------------------------------------------------------------------


def test_epsilon_of_empty_history_is_zero_and_projection_records_nothing() -> None:
    assert epsilon_of([], DELTA, AccountantName.RDP) == 0.0
    history = [(2.0, 0.1, 10)]
    projected = project_epsilon(history, (2.0, 0.1, 10), DELTA, AccountantName.RDP)
    assert history == [(2.0, 0.1, 10)]
    assert _close(projected, epsilon_of([(2.0, 0.1, 20)], DELTA, AccountantName.RDP))
    assert projected > epsilon_of(history, DELTA, AccountantName.RDP)


def test_make_accountant_holds_plain_python_numbers() -> None:
    accountant = make_accountant(
        AccountantName.PRV, [(np.float32(1.5), np.float64(0.25), np.int64(3))]
    )
    assert isinstance(accountant, PRVAccountant)
    ((noise, rate, steps),) = accountant.history
    assert (type(noise), type(rate), type(steps)) == (float, float, int)
    assert (noise, rate, steps) == (1.5, 0.25, 3)
    assert isinstance(make_accountant(AccountantName.RDP), RDPAccountant)


@pytest.mark.parametrize(
    ("rows", "batch", "expected"),
    [(40, 8, 1 / 5), (50, 8, 1 / 7), (5, 1, 1 / 5), (3, 8, 1.0), (8, 8, 1.0)],
)
def test_poisson_sample_rate_is_one_over_batches_per_epoch(
    rows: int, batch: int, expected: float
) -> None:
    assert poisson_sample_rate(rows, batch) == pytest.approx(expected)
    # The rate Opacus itself derives from a DataLoader of that size.
    loader = DataLoader(TensorDataset(torch.zeros(rows, 1)), batch_size=batch)
    assert poisson_sample_rate(rows, batch) == pytest.approx(1 / len(loader))


def test_poisson_sample_rate_refuses_zero_rows() -> None:
    with pytest.raises(ConfigError):
        poisson_sample_rate(0, 8)


# --- noise calibration -----------------------------------------------------------------------


def test_prv_calibration_spends_the_target_and_not_more() -> None:
    target, rate, steps = 3.0, poisson_sample_rate(200, 16), 60
    noise = noise_multiplier_for(target, DELTA, rate, steps, AccountantName.PRV)
    spent = epsilon_of([(noise, rate, steps)], DELTA, AccountantName.PRV)
    assert 0.99 * target <= spent <= target


@settings(max_examples=3, deadline=None)
@given(
    target=st.floats(min_value=0.6, max_value=4.0),
    rows=st.integers(min_value=50, max_value=400),
    steps=st.integers(min_value=5, max_value=60),
)
def test_rdp_calibration_spends_the_target_and_not_more(
    target: float, rows: int, steps: int
) -> None:
    rate = poisson_sample_rate(rows, 8)
    noise = noise_multiplier_for(target, DELTA, rate, steps, AccountantName.RDP)
    spent = epsilon_of([(noise, rate, steps)], DELTA, AccountantName.RDP)
    assert 0.99 * target <= spent <= target


def test_a_smaller_institution_needs_more_noise_for_the_same_epsilon() -> None:
    # The real hospitals of Fed-Heart-Disease: Switzerland trains on 30 rows, Cleveland 200.
    sizes = {i.institution_id: len(i.x_train) for i in fed_heart_disease.load().institutions}
    assert sizes["switzerland"] < sizes["cleveland"]
    small, large = (
        noise_multiplier_for(2.0, DELTA, poisson_sample_rate(sizes[site], 8), 40, RDP)
        for site in ("switzerland", "cleveland")
    )
    assert small > large


def test_more_steps_need_more_noise() -> None:
    rate = poisson_sample_rate(100, 10)
    few = noise_multiplier_for(2.0, DELTA, rate, 10, AccountantName.RDP)
    many = noise_multiplier_for(2.0, DELTA, rate, 100, AccountantName.RDP)
    assert many > few


@pytest.mark.parametrize(
    ("target", "delta"), [(0.0, 1e-5), (-1.0, 1e-5), (1.0, 0.0), (1.0, 1.0), (1.0, 1.5)]
)
def test_invalid_calibration_targets_are_config_errors(target: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        noise_multiplier_for(target, delta, 0.1, 10, AccountantName.RDP)


# --- the noisy count: a Gaussian mechanism composed with DP-SGD -------------------------------


def _analytic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The exact epsilon of the Gaussian mechanism (Balle and Wang, ICML 2018), mu = 1 / sigma."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    mu = 1.0 / noise_multiplier

    def excess(epsilon: float) -> float:
        return (
            norm.cdf(-epsilon / mu + mu / 2)
            - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)
            - delta
        )

    return float(brentq(excess, 1e-9, 100.0))


@pytest.mark.parametrize("noise", [5.0, 10.0, 20.0])
def test_the_count_entry_is_accounted_as_the_gaussian_mechanism(noise: float) -> None:
    # Sample rate 1, one step: the accountants' subsampled Gaussian is the plain Gaussian
    # mechanism; PRV lands just above the exact value (its error bound), RDP above it.
    exact = _analytic_gaussian_epsilon(noise, 1e-3)
    prv = epsilon_of([gaussian_entry(noise)], 1e-3, AccountantName.PRV)
    rdp = epsilon_of([gaussian_entry(noise)], 1e-3, AccountantName.RDP)
    assert exact <= prv <= exact + 0.02
    assert exact <= rdp


def test_calibration_composes_the_count_and_the_steps_to_the_target() -> None:
    # RDP here for speed; the ClientApp's tests run the same calibration with PRV.
    accountant = AccountantName.RDP
    rate, steps, count = poisson_sample_rate(30, 16), 75, [gaussian_entry(10.0)]
    alone = noise_multiplier_for(1.0, 1e-3, rate, steps, accountant)
    with_count = noise_multiplier_for(1.0, 1e-3, rate, steps, accountant, count)
    composed = epsilon_of([*count, (with_count, rate, steps)], 1e-3, accountant)
    assert 1.0 - 0.006 <= composed <= 1.0
    assert with_count > alone  # the count's share is paid for with more training noise


def test_a_count_that_alone_spends_the_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="count noise"):
        noise_multiplier_for(0.1, 1e-3, 0.5, 10, AccountantName.RDP, [gaussian_entry(2.0)])


@settings(max_examples=15, deadline=None)
@given(
    history=st.lists(
        st.tuples(
            st.floats(0.5, 30.0),
            st.floats(1e-3, 1.0),
            st.integers(1, 400),
        ),
        min_size=1,
        max_size=4,
    ),
    delta=st.sampled_from([1e-3, 1e-5]),
)
def test_the_remembered_rdp_epsilon_is_opacus_own_bit_for_bit(
    history: list[tuple[float, float, int]], delta: float
) -> None:
    accountant = RDPAccountant()
    accountant.history = list(history)
    assert epsilon_of(history, delta, AccountantName.RDP) == accountant.get_epsilon(delta=delta)
    # Asked again (remembered), the same number.
    assert epsilon_of(history, delta, AccountantName.RDP) == accountant.get_epsilon(delta=delta)


@settings(max_examples=6, deadline=None)
@given(
    history=st.lists(
        st.tuples(
            st.floats(0.6, 30.0),
            st.floats(1e-3, 1.0),
            st.integers(1, 300),
        ),
        min_size=1,
        max_size=3,
    ),
    delta=st.sampled_from([1e-3, 1e-5]),
)
def test_the_prv_epsilon_is_opacus_own_bit_for_bit(
    history: list[tuple[float, float, int]], delta: float
) -> None:
    """The PRV epsilon (with the safe domain's RDP bounds from remembered vectors) is
    exactly Opacus's PRVAccountant.get_epsilon, a sample rate of 1 (a count) included."""
    history = [*history, (50.0, 1.0, 1)]
    accountant = PRVAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = accountant.get_epsilon(delta=delta)
    assert epsilon_of(history, delta, AccountantName.PRV) == expected
