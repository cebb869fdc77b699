"""Local training, FedProx's proximal term, batching and weight exchange (plain PyTorch)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from countyfl import protocol
from countyfl.models import LogisticRegression, SmallMLP
from countyfl.training.local import (
    batch_indices,
    evaluate,
    get_weights,
    make_optimizer,
    predict_proba,
    set_weights,
    train,
)
from countyfl.training.plan import OptimizerName, TrainingPlan


def _separable(rows: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.5).astype(np.float32)
    centres = np.where(y[:, None] == 1, 2.0, -2.0)
    x = (rng.normal(size=(rows, 3)) * 0.5 + centres * np.array([1.0, 0.5, 0.0])).astype(np.float32)
    return x, y


def _flat(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([w.ravel() for w in get_weights(model)])


@pytest.mark.parametrize("optimizer", list(OptimizerName))
def test_training_on_separable_data_lowers_loss_and_classifies(optimizer: OptimizerName) -> None:
    torch.manual_seed(0)
    x, y = _separable()
    model = LogisticRegression(3)
    before = evaluate(model, x, y)
    plan = TrainingPlan(local_steps=150, batch_size=16, learning_rate=0.1, optimizer=optimizer)
    outcome = train(model, x, y, plan, torch.Generator().manual_seed(1))
    after = evaluate(model, x, y)
    assert outcome.steps == 150
    assert math.isfinite(outcome.mean_loss)
    assert after[protocol.LOSS] < 0.5 * before[protocol.LOSS]
    assert after[protocol.ACCURACY] >= 0.97
    assert after[protocol.AUC] >= 0.99


def test_mlp_trains_too() -> None:
    torch.manual_seed(0)
    x, y = _separable()
    model = SmallMLP(3)
    before = evaluate(model, x, y)[protocol.LOSS]
    plan = TrainingPlan(local_steps=200, batch_size=32, learning_rate=0.05, momentum=0.9)
    train(model, x, y, plan, torch.Generator().manual_seed(1))
    after = evaluate(model, x, y)
    assert after[protocol.LOSS] < before
    assert after[protocol.ACCURACY] >= 0.95


def test_training_is_reproducible_with_the_same_generator_seed() -> None:
    x, y = _separable()
    plan = TrainingPlan(local_steps=20, batch_size=8, learning_rate=0.1)
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        model = LogisticRegression(3)
        outcome = train(model, x, y, plan, torch.Generator().manual_seed(9))
        results.append((outcome.mean_loss, _flat(model)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_fedprox_keeps_weights_near_the_global_model() -> None:
    x, y = _separable()
    torch.manual_seed(0)
    start = LogisticRegression(3)
    start_weights = get_weights(start)
    moved = {}
    for mu in (0.0, 5.0):
        model = LogisticRegression(3)
        set_weights(model, start_weights)
        plan = TrainingPlan(local_steps=100, batch_size=16, learning_rate=0.1, proximal_mu=mu)
        train(model, x, y, plan, torch.Generator().manual_seed(4))
        moved[mu] = float(
            np.linalg.norm(_flat(model) - np.concatenate([w.ravel() for w in start_weights]))
        )
    assert moved[0.0] > 0.5
    assert moved[5.0] < 0.25 * moved[0.0]


def test_fedprox_loss_adds_half_mu_times_squared_distance() -> None:
    x, y = _separable(rows=64)
    torch.manual_seed(0)
    model = LogisticRegression(3)
    anchor = get_weights(model)

    def run(steps: int, mu: float) -> float:
        set_weights(model, anchor)
        plan = TrainingPlan(local_steps=steps, batch_size=8, learning_rate=0.5, proximal_mu=mu)
        return train(model, x, y, plan, torch.Generator().manual_seed(2)).mean_loss

    # The proximal gradient vanishes at the anchor, so step 1 is the same with or without
    # it; step 2's loss then differs by exactly (mu / 2) * ||w1 - anchor||^2.
    run(1, 0.0)
    squared = float(
        sum(((w - a) ** 2).sum() for w, a in zip(get_weights(model), anchor, strict=True))
    )
    assert squared > 0
    mu = 3.0
    difference = run(2, mu) - run(2, 0.0)
    assert difference == pytest.approx(0.5 * mu * squared / 2, rel=1e-4)


def test_training_on_no_rows_does_nothing() -> None:
    model = LogisticRegression(2)
    weights = _flat(model)
    empty_x = np.zeros((0, 2), dtype=np.float32)
    outcome = train(
        model,
        empty_x,
        np.zeros(0, dtype=np.float32),
        TrainingPlan(local_steps=5, batch_size=4, learning_rate=0.1),
        torch.Generator(),
    )
    assert outcome.steps == 0 and math.isnan(outcome.mean_loss)
    np.testing.assert_array_equal(_flat(model), weights)


@settings(max_examples=150, deadline=None)
@given(
    num_rows=st.integers(1, 60),
    batch_size=st.integers(1, 80),
    local_steps=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_batch_indices_are_epochs_without_repetition(
    num_rows: int, batch_size: int, local_steps: int, seed: int
) -> None:
    plan = TrainingPlan(local_steps=local_steps, batch_size=batch_size, learning_rate=0.1)
    batches = batch_indices(num_rows, plan, torch.Generator().manual_seed(seed))
    size = min(batch_size, num_rows)
    assert len(batches) == local_steps
    assert all(len(b) == size for b in batches)
    assert all(int(b.min()) >= 0 and int(b.max()) < num_rows for b in batches)
    per_epoch = num_rows // size
    for start in range(0, local_steps, per_epoch):
        epoch = torch.cat(batches[start : start + per_epoch]).tolist()
        assert len(epoch) == len(set(epoch)), "a row repeats within an epoch"
        if start + per_epoch <= local_steps and num_rows % size == 0:
            assert sorted(epoch) == list(range(num_rows)), "an epoch misses rows"
    again = batch_indices(num_rows, plan, torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_batch_indices_reshuffle_each_epoch() -> None:
    plan = TrainingPlan(local_steps=8, batch_size=5, learning_rate=0.1)
    batches = batch_indices(20, plan, torch.Generator().manual_seed(0))
    first, second = torch.cat(batches[:4]).tolist(), torch.cat(batches[4:]).tolist()
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second, "the second epoch repeats the first one's order"
    assert first != list(range(20)), "rows are not shuffled"


def test_make_optimizer_follows_the_plan() -> None:
    model = LogisticRegression(2)
    sgd = make_optimizer(model, TrainingPlan(1, 1, 0.3, momentum=0.5, weight_decay=0.01))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["lr"] == 0.3
    assert sgd.param_groups[0]["momentum"] == 0.5
    assert sgd.param_groups[0]["weight_decay"] == 0.01
    adam = make_optimizer(model, TrainingPlan(1, 1, 0.2, optimizer=OptimizerName.ADAM))
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["lr"] == 0.2


@pytest.mark.parametrize("factory", [LogisticRegression, SmallMLP])
def test_get_and_set_weights_round_trip(factory: type[torch.nn.Module]) -> None:
    torch.manual_seed(0)
    source, target = factory(4), factory(4)
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    assert not np.allclose(predict_proba(source, x), predict_proba(target, x))
    weights = get_weights(source)
    assert [w.shape for w in weights] == [t.shape for t in source.state_dict().values()]
    set_weights(target, weights)
    np.testing.assert_array_equal(predict_proba(source, x), predict_proba(target, x))
    for a, b in zip(get_weights(target), weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_get_weights_returns_copies() -> None:
    model = LogisticRegression(3)
    weights = get_weights(model)
    original = weights[0].copy()
    weights[0] += 100.0
    np.testing.assert_array_equal(get_weights(model)[0], original)


def test_set_weights_refuses_the_wrong_number_of_arrays() -> None:
    model = LogisticRegression(3)
    with pytest.raises(ValueError, match="expected 2 arrays"):
        set_weights(model, get_weights(model)[:1])


def test_predict_proba_is_the_sigmoid_of_the_logit() -> None:
    model = LogisticRegression(2)
    weights = [np.array([[2.0, -1.0]], dtype=np.float32), np.array([0.5], dtype=np.float32)]
    set_weights(model, weights)
    x = np.array([[1.0, 1.0], [0.0, 3.0], [-2.0, 0.0]], dtype=np.float32)
    logits = x @ weights[0][0] + weights[1][0]
    np.testing.assert_allclose(predict_proba(model, x), 1 / (1 + np.exp(-logits)), rtol=1e-6)


def test_evaluate_loss_is_binary_cross_entropy() -> None:
    model = LogisticRegression(1)
    set_weights(model, [np.array([[1.0]], dtype=np.float32), np.array([0.0], dtype=np.float32)])
    x = np.array([[0.0], [2.0], [-1.0]], dtype=np.float32)
    y = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    p = 1 / (1 + np.exp(-x[:, 0].astype(np.float64)))
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    metrics = evaluate(model, x, y)
    assert metrics[protocol.LOSS] == pytest.approx(expected, rel=1e-5)
    assert set(metrics) == set(protocol.EVALUATION_METRICS)
