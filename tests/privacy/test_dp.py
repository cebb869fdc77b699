"""DP-SGD mechanics of ``train_private``: clipping, empty Poisson batches, steps, FedProx.

Oracle for clipping (as Opacus checks clipped norms): with noise 0 and plain SGD, one step
moves the weights by lr x (sum of clipped per-sample gradients) / expected batch size, so
its norm is at most lr x C x (rows in the batch) / (expected batch size), with equality
when every per-sample gradient points the same way and is longer than C.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from countyfl.models import LogisticRegression, SmallMLP
from countyfl.privacy.accounting import poisson_sample_rate
from countyfl.privacy.dp import PrivacyPlan, train_private
from countyfl.privacy.modes import AccountantName, GradSampleMode
from countyfl.training.local import get_weights
from countyfl.training.plan import TrainingPlan

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


class RecordingLogReg(nn.Module):
    """Logistic regression that records how many rows every forward pass saw."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, 1)
        self.batch_rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_rows.append(int(x.shape[0]))
        return self.linear(x).squeeze(-1)


def _rows(rows: int, features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (rng.random(rows) < 0.5).astype(np.float32)
    return x, y


def _flat(model: nn.Module) -> np.ndarray:
    return np.concatenate([w.ravel() for w in get_weights(model)]).astype(np.float64)


def _one_step(
    model: RecordingLogReg,
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    clip: float,
    mode: GradSampleMode = GradSampleMode.HOOKS,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Weight change of one noise-free DP-SGD step (lr 1) and the rows that step used.

    The Poisson draw comes from a generator seeded with ``seed`` (tests only: countyfl
    itself draws from a secret one).
    """
    model.batch_rows.clear()
    before = _flat(model)
    outcome = train_private(
        model,
        x,
        y,
        TrainingPlan(local_steps=1, batch_size=batch, learning_rate=1.0),
        PrivacyPlan(noise_multiplier=0.0, max_grad_norm=clip, grad_sample_mode=mode),
        [],
        generator=torch.Generator().manual_seed(seed),
    )
    assert outcome.steps == 1
    # An empty batch runs no forward pass; a non-empty one runs exactly one.
    assert len(model.batch_rows) <= 1
    rows = model.batch_rows[0] if model.batch_rows else 0
    return _flat(model) - before, rows


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_aligned_per_sample_gradients_are_clipped_to_exactly_c(mode: GradSampleMode) -> None:
    # Every row is the same large vector with the same (wrong) label: every per-sample
    # gradient is the same vector, far longer than C, so the clipped sum is rows x C along it.
    rows, batch, clip = 40, 8, 0.5
    x = np.tile(np.array([[30.0, -20.0, 10.0]], dtype=np.float32), (rows, 1))
    expected_batch = rows * poisson_sample_rate(rows, batch)
    checked = 0
    for seed in range(4):
        torch.manual_seed(seed)
        model = RecordingLogReg(3)
        with torch.no_grad():
            logit = float(model.linear(torch.from_numpy(x[:1]))[0])
        label = 1.0 if logit < 0 else 0.0
        y = np.full(rows, label, dtype=np.float32)
        # Per-sample gradient of BCE: (sigmoid(logit) - label) * (x, 1).
        gradient = (1 / (1 + math.exp(-logit)) - label) * np.append(x[0], 1.0)
        assert np.linalg.norm(gradient) > 10 * clip  # clipping must bind
        change, used = _one_step(model, x, y, batch, clip, mode, seed=seed)
        if used == 0:
            assert np.allclose(change, 0.0)
            continue
        checked += 1
        assert np.linalg.norm(change) == pytest.approx(clip * used / expected_batch, rel=1e-4)
        # Against the gradient: the step descends.
        cosine = change @ gradient / (np.linalg.norm(change) * np.linalg.norm(gradient))
        assert cosine == pytest.approx(-1.0, abs=1e-4)
    assert checked >= 2


def test_a_noise_free_step_never_moves_further_than_the_clipped_bound() -> None:
    rows, batch, clip = 48, 12, 0.2
    expected_batch = rows * poisson_sample_rate(rows, batch)
    largest_ratio = 0.0
    for seed in range(8):
        x, y = _rows(rows, seed=seed)
        x = x * 25.0  # per-sample gradients far longer than C
        torch.manual_seed(seed)
        model = RecordingLogReg(3)
        change, used = _one_step(model, x, y, batch, clip, seed=seed)
        bound = clip * used / expected_batch
        assert np.linalg.norm(change) <= bound + 1e-6
        if used:
            largest_ratio = max(largest_ratio, float(np.linalg.norm(change)) / bound)
    # Not vacuous: some steps come close to the bound.
    assert largest_ratio > 0.3


def test_without_clipping_the_same_step_would_break_the_bound() -> None:
    # Control for the two tests above: a huge C leaves the gradients unclipped.
    rows, batch, clip = 48, 12, 0.2
    x, y = _rows(rows, seed=3)
    x = x * 25.0
    expected_batch = rows * poisson_sample_rate(rows, batch)
    for seed in range(20):
        torch.manual_seed(seed)
        change, used = _one_step(RecordingLogReg(3), x, y, batch, clip=1e6, seed=seed)
        if used:
            assert np.linalg.norm(change) > clip * used / expected_batch
            return
    pytest.fail("no step sampled a row")


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_empty_poisson_batches_are_steps_that_do_not_crash(mode: GradSampleMode) -> None:
    x, y = _rows(5)
    torch.manual_seed(0)
    model = RecordingLogReg(3)
    outcome = train_private(
        model,
        x,
        y,
        TrainingPlan(local_steps=30, batch_size=1, learning_rate=0.1),
        PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode),
        [],
    )
    assert outcome.steps == 30
    assert outcome.sample_rate == pytest.approx(1 / 5)
    # Sample rate 1/5 over 5 rows: about a third of the batches are empty, yet all 30
    # steps are accounted.
    non_empty = [n for n in model.batch_rows if n > 0]
    assert len(non_empty) < 30
    assert outcome.history_after == [(1.0, pytest.approx(0.2), 30)]
    assert math.isfinite(outcome.mean_loss)
    assert np.isfinite(_flat(model)).all()


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_an_empty_batch_still_adds_noise(mode: GradSampleMode) -> None:
    # Two rows, batch size 1: a one-step round samples no row a quarter of the time.
    x, y = _rows(2)
    for seed in range(60):
        torch.manual_seed(seed)
        model = RecordingLogReg(3)
        before = _flat(model)
        outcome = train_private(
            model,
            x,
            y,
            TrainingPlan(local_steps=1, batch_size=1, learning_rate=1.0),
            PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode),
            [],
        )
        if not model.batch_rows:
            assert outcome.history_after == [(1.0, 0.5, 1)]
            assert not np.allclose(_flat(model), before)
            return
    pytest.fail("no empty batch in 60 one-step rounds at sample rate 1/2")


def test_mean_loss_is_nan_exactly_when_no_batch_had_a_row() -> None:
    # Two rows, batch size 1: sample rate 1/2, so a one-step round is empty a quarter of
    # the time; over 40 seeds both cases occur.
    x, y = _rows(2)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        model = RecordingLogReg(3)
        outcome = train_private(
            model,
            x,
            y,
            TrainingPlan(local_steps=1, batch_size=1, learning_rate=0.1),
            PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0),
            [],
        )
        saw_rows = any(n > 0 for n in model.batch_rows)
        seen.add(saw_rows)
        assert math.isnan(outcome.mean_loss) == (not saw_rows)
        assert outcome.steps == 1
        assert outcome.history_after == [(1.0, 0.5, 1)]
    assert seen == {True, False}


@pytest.mark.parametrize(("rows", "batch", "local_steps"), [(40, 8, 3), (50, 8, 17), (10, 32, 4)])
def test_steps_sample_rate_and_history_follow_the_plan(
    rows: int, batch: int, local_steps: int
) -> None:
    x, y = _rows(rows)
    torch.manual_seed(0)
    outcome = train_private(
        LogisticRegression(3),
        x,
        y,
        TrainingPlan(local_steps=local_steps, batch_size=batch, learning_rate=0.1),
        PrivacyPlan(noise_multiplier=1.1, max_grad_norm=1.0, accountant=AccountantName.RDP),
        [(2.0, 0.5, 3)],
    )
    rate = poisson_sample_rate(rows, batch)
    assert outcome.steps == local_steps
    assert outcome.sample_rate == pytest.approx(rate)
    assert outcome.history_after == [(2.0, 0.5, 3), (1.1, pytest.approx(rate), local_steps)]
    assert all(
        (type(n), type(q), type(s)) == (float, float, int) for n, q, s in outcome.history_after
    )


def test_history_before_is_not_mutated() -> None:
    x, y = _rows(40)
    history = [(1.1, 0.2, 4)]
    outcome = train_private(
        LogisticRegression(3),
        x,
        y,
        TrainingPlan(local_steps=3, batch_size=8, learning_rate=0.1),
        PrivacyPlan(noise_multiplier=1.1, max_grad_norm=1.0),
        history,
    )
    assert history == [(1.1, 0.2, 4)]
    assert outcome.history_after == [(1.1, 0.2, 7)]


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_the_model_is_trained_in_place_and_left_plain(mode: GradSampleMode) -> None:
    x, y = _rows(40)
    torch.manual_seed(0)
    model = SmallMLP(3)
    keys = list(model.state_dict())
    before = _flat(model)
    plan = TrainingPlan(local_steps=5, batch_size=8, learning_rate=0.1)
    privacy = PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
    train_private(model, x, y, plan, privacy, [])
    assert list(model.state_dict()) == keys
    assert not any(k.startswith("_module.") for k in model.state_dict())
    assert not np.allclose(_flat(model), before)
    # No Opacus hooks left behind: the same model trains again, and plain forward works.
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
    again = train_private(model, x, y, plan, privacy, [])
    assert again.steps == 5
    assert model(torch.from_numpy(x)).shape == (40,)


def _distance_moved(mu: float, seed: int) -> float:
    x, y = _rows(60, seed=seed)
    torch.manual_seed(100 + seed)
    model = LogisticRegression(3)
    start = _flat(model)
    torch.manual_seed(seed)
    train_private(
        model,
        x,
        y,
        TrainingPlan(local_steps=20, batch_size=10, learning_rate=0.5, proximal_mu=mu),
        PrivacyPlan(noise_multiplier=0.5, max_grad_norm=1.0),
        [],
    )
    return float(np.linalg.norm(_flat(model) - start))


def test_fedprox_under_dp_keeps_weights_closer_to_the_start() -> None:
    for seed in range(3):
        free = _distance_moved(0.0, seed)
        proximal = _distance_moved(1.5, seed)
        assert free > 0
        assert proximal < 0.7 * free


class BiasFreeLogReg(nn.Module):
    """Logistic regression without a bias, starting at zero."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


def _private_weights(x: np.ndarray, y: np.ndarray, mu: float, seed: int) -> np.ndarray:
    model = BiasFreeLogReg(x.shape[1])
    train_private(
        model,
        x,
        y,
        TrainingPlan(local_steps=6, batch_size=8, learning_rate=0.1, proximal_mu=mu),
        PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1e-3, accountant=AccountantName.RDP),
        [],
        generator=torch.Generator().manual_seed(seed),
    )
    return _flat(model)


def test_fedprox_pull_is_post_processing_and_costs_no_privacy() -> None:
    # Scaling every row by 10 leaves every clipped per-example gradient as it was: far
    # longer than C, each clips to C times its direction, and x and 10 x point the same
    # way (no bias term; the logits stay small, so no sigmoid saturates). With the same
    # randomness the noisy DP-SGD steps are then identical, and so must be the weights
    # after the proximal pull, unless the pull reads the rows (any statistic of them,
    # such as their mean, changes tenfold).
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(40, 3)) * 25).astype(np.float32)
    y = (rng.random(40) < 0.5).astype(np.float32)
    for seed in range(3):
        plain = _private_weights(x, y, mu=0.0, seed=seed)
        pulled = _private_weights(x, y, mu=2.0, seed=seed)
        pulled_scaled = _private_weights(10 * x, y, mu=2.0, seed=seed)
        np.testing.assert_allclose(_private_weights(10 * x, y, mu=0.0, seed=seed), plain, atol=1e-9)
        assert np.linalg.norm(pulled - plain) > 0.05 * np.linalg.norm(plain)  # it pulls
        np.testing.assert_allclose(pulled_scaled, pulled, atol=1e-9)
    # And the accountant is told the same steps with and without the pull.
    privacy = PrivacyPlan(noise_multiplier=1.3, max_grad_norm=1.0, accountant=AccountantName.RDP)
    histories = [
        train_private(
            LogisticRegression(3), x, y, TrainingPlan(6, 8, 0.1, proximal_mu=mu), privacy, []
        ).history_after
        for mu in (0.0, 2.0)
    ]
    assert histories[0] == histories[1] == [(1.3, poisson_sample_rate(40, 8), 6)]


def test_poisson_batches_are_drawn_at_the_planned_rate() -> None:
    # The rate the accountant is told is the rate the sampler uses: rows per step average
    # rate x rows (here not Opacus's default of 1 / ceil(rows / batch) = 1 / 7 = 0.14).
    x, y = _rows(50)
    model = RecordingLogReg(3)
    outcome = train_private(
        model,
        x,
        y,
        TrainingPlan(local_steps=400, batch_size=8, learning_rate=0.01),
        PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.3),
        [],
    )
    assert outcome.history_after == [(1.0, 0.3, 400)]
    rows_per_step = np.array(model.batch_rows + [0] * (400 - len(model.batch_rows)))
    standard_error = math.sqrt(50 * 0.3 * 0.7 / 400)
    assert abs(rows_per_step.mean() - 15.0) < 5 * standard_error


def test_the_noise_does_not_come_from_torchs_global_generator() -> None:
    x, y = _rows(40)
    results, states = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = LogisticRegression(3)
        before = torch.get_rng_state()
        train_private(
            model,
            x,
            y,
            TrainingPlan(local_steps=5, batch_size=8, learning_rate=0.5),
            PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0),
            [],
        )
        states.append(torch.equal(torch.get_rng_state(), before))
        results.append(_flat(model))
    assert states == [True, True]  # nothing drawn from the global generator
    assert not np.array_equal(results[0], results[1])  # same global seed, different noise
