"""The loss-threshold membership-inference audit (Yeom et al., CSF 2018)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from countyfl.models import LogisticRegression, SmallMLP
from countyfl.privacy.membership_inference import membership_inference_auc, per_example_loss


def _random_rows(rows: int, features: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (rng.random(rows) < 0.5).astype(np.float32)
    return x, y


def test_per_example_loss_is_binary_cross_entropy_of_every_row() -> None:
    torch.manual_seed(0)
    model = LogisticRegression(4)
    x, y = _random_rows(25, 4, np.random.default_rng(0))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy().astype(np.float64)
    probability = 1 / (1 + np.exp(-logits))
    expected = -(y * np.log(probability) + (1 - y) * np.log(1 - probability))
    loss = per_example_loss(model, x, y)
    assert loss.shape == (25,)
    assert loss.dtype == np.float64
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_an_unseen_model_cannot_tell_members_from_non_members() -> None:
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    model = SmallMLP(5)
    members = _random_rows(600, 5, rng)
    non_members = _random_rows(600, 5, rng)
    auc = membership_inference_auc(model, *members, *non_members)
    assert 0.4 <= auc <= 0.6


def test_an_overfit_model_gives_its_members_away() -> None:
    rng = np.random.default_rng(2)
    torch.manual_seed(2)
    # Random labels on few wide rows: only memorisation fits them.
    x_members, y_members = _random_rows(24, 20, rng)
    x_fresh, y_fresh = _random_rows(200, 20, rng)
    model = SmallMLP(20, hidden=64)
    before = membership_inference_auc(model, x_members, y_members, x_fresh, y_fresh)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    features, labels = torch.from_numpy(x_members), torch.from_numpy(y_members)
    model.train()
    for _ in range(150):  # full-batch epochs
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(features), labels).backward()
        optimizer.step()
    after = membership_inference_auc(model, x_members, y_members, x_fresh, y_fresh)
    assert per_example_loss(model, x_members, y_members).mean() < 0.1
    assert after > 0.7
    assert after > before


def test_swapping_members_and_non_members_mirrors_the_auc() -> None:
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    model = LogisticRegression(3)
    a = _random_rows(40, 3, rng)
    b = _random_rows(30, 3, rng)
    forward = membership_inference_auc(model, *a, *b)
    backward = membership_inference_auc(model, *b, *a)
    assert forward + backward == pytest.approx(1.0)


def test_lower_loss_on_members_means_auc_one() -> None:
    # A model that predicts the members' labels confidently and the non-members' wrongly.
    model = LogisticRegression(1)
    with torch.no_grad():
        model.linear.weight.fill_(5.0)
        model.linear.bias.zero_()
    x = np.array([[1.0], [2.0], [-1.0]], dtype=np.float32)
    members_y = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    assert membership_inference_auc(model, x, members_y, x, 1 - members_y) == 1.0


@pytest.mark.parametrize("empty_side", ["members", "non-members"])
def test_an_empty_side_gives_nan(empty_side: str) -> None:
    model = LogisticRegression(3)
    x, y = _random_rows(10, 3, np.random.default_rng(4))
    none_x, none_y = np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.float32)
    if empty_side == "members":
        auc = membership_inference_auc(model, none_x, none_y, x, y)
    else:
        auc = membership_inference_auc(model, x, y, none_x, none_y)
    assert math.isnan(auc)
