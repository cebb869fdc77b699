"""Distributed noise: each site draws a share of sigma, the county's sum carries all of it.

The oracle is the noise itself. On rows whose features are all zero, a bias-free logistic
regression's per-example gradients are exactly zero, so one plain SGD step moves the
weights by ``-lr * C * sigma_drawn * N(0, 1) / divisor`` and nothing else: the spread of
the step over many weights measures the noise a site drew, and the spread of the
batch-weighted sum over sites the noise the county's decrypted sum carries.
(docs/privacy.md, "Distributed noise".)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from countyfl.errors import ConfigError
from countyfl.privacy.accounting import epsilon_of, gaussian_entry
from countyfl.privacy.budget import train_within_budget
from countyfl.privacy.dp import PrivacyPlan, train_private
from countyfl.privacy.ledger import Budget, PrivacyLedger
from countyfl.privacy.modes import AccountantName, GradSampleMode
from countyfl.privacy.weighting import AggregationWeight, aggregation_weight, expected_batch
from countyfl.run_config import parse_run_config
from countyfl.training.plan import TrainingPlan
from tests.federation.support import DISTRIBUTED_NOISE

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing", "ignore:Optimal order is the largest alpha"
)

WEIGHTS = 400
ONE_STEP = TrainingPlan(local_steps=1, batch_size=8, learning_rate=1.0, momentum=0.0)


class BiasFree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(WEIGHTS, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


def _zero_rows(rows: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.zeros(rows, dtype=np.float32)
    y[::2] = 1.0
    return np.zeros((rows, WEIGHTS), dtype=np.float32), y


def _step(model: nn.Module) -> np.ndarray:
    return model.linear.weight.detach().numpy().ravel().astype(np.float64)


def _one_round(ledger: PrivacyLedger, rows: int, **settings: Any) -> Any:
    """Round 1 of run "1" at a site of ``rows`` zero-feature rows: one step, epsilon 1,
    RDP, count noise 10 (``settings`` overrides any of it)."""
    x, y = _zero_rows(rows)
    arguments: dict[str, Any] = {
        "institution_id": "site",
        "ledger": ledger,
        "budget": Budget(10.0, 1e-3),
        "run_id": "1",
        "server_round": 1,
        "model": BiasFree(),
        "x": x,
        "y": y,
        "plan": ONE_STEP,
        "target_epsilon": 1.0,
        "steps_per_run": 1,
        "max_grad_norm": 1.0,
        "accountant": AccountantName.RDP,
        "grad_sample_mode": GradSampleMode.HOOKS,
        "count_noise": 10.0,
    }
    return train_within_budget(**(arguments | settings))


@pytest.mark.parametrize("shares", [1, 9])
def test_a_site_draws_its_share_and_its_history_records_the_whole_sigma(shares: int) -> None:
    model = BiasFree()
    x, y = _zero_rows(20)
    plan = PrivacyPlan(
        3.0, 1.0, AccountantName.RDP, sample_rate=0.5, expected_batch_size=1.0, noise_shares=shares
    )
    outcome = train_private(model, x, y, ONE_STEP, plan, [])
    drawn = np.std(_step(model))
    # lr 1, clip 1, divisor 1: the step IS the noise, sigma / sqrt(shares) per weight
    assert drawn == pytest.approx(3.0 / np.sqrt(shares), rel=0.12)
    # What protects a record is the whole sigma in the sum: that is what is accounted.
    assert outcome.history_after == [(3.0, 0.5, 1)]


def test_noise_shares_below_one_are_refused() -> None:
    x, y = _zero_rows(4)
    plan = PrivacyPlan(1.0, 1.0, AccountantName.RDP, sample_rate=0.5, noise_shares=0)
    with pytest.raises(ConfigError, match="noise shares 0"):
        train_private(BiasFree(), x, y, ONE_STEP, plan, [])


def test_the_countys_sum_of_shares_carries_the_whole_sigma(tmp_path: Path) -> None:
    """Eight sites of different sizes, each drawing sigma / sqrt(8): their updates weighted
    by their expected batches add up to the county's noisy gradient sum, whose noise is
    sigma; every site calibrated the same sigma and its ledger spends the run's epsilon."""
    sites, rate, target = 8, 0.1, 1.0
    total = np.zeros(WEIGHTS)
    sigmas, singles = set(), []
    for site in range(sites):
        model = BiasFree()
        ledger = PrivacyLedger(tmp_path / f"site-{site}" / "ledger.sqlite")
        spend = _one_round(
            ledger,
            60 + 50 * site,
            institution_id=f"site-{site}",
            model=model,
            target_epsilon=target,
            sample_rate=rate,
            noise_shares=sites,
            calibration_delta=1e-3,
        )
        weight = aggregation_weight(
            AggregationWeight.BATCH, spend.num_examples, spend.noise_multiplier, rate, 1, WEIGHTS
        )
        assert weight == expected_batch(spend.num_examples, rate)
        assert spend.outcome.sample_rate == rate
        # The step's divisor is the weight, so the weighted update is -lr x the noisy sum.
        contribution = weight * _step(model)
        singles.append(np.std(contribution))
        total += contribution
        sigmas.add(spend.noise_multiplier)
        # The ledger accounts the whole sigma, composed with the noisy count, to the target.
        history = [gaussian_entry(10.0), (spend.noise_multiplier, rate, 1)]
        assert spend.epsilon_after == pytest.approx(
            epsilon_of(history, 1e-3, AccountantName.RDP), rel=1e-6
        )
        assert spend.epsilon_after == pytest.approx(target, abs=0.01)
    (sigma,) = sigmas  # the same sigma at every site: the run fixes the rate and delta
    assert np.std(total) == pytest.approx(sigma, rel=0.12)
    # Alone, a site's update carries only its share: this is why it is never decrypted alone.
    assert np.mean(singles) == pytest.approx(sigma / np.sqrt(sites), rel=0.12)


def test_distributed_noise_without_its_rate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sample rate"):
        _one_round(PrivacyLedger(tmp_path / "ledger.sqlite"), 10, noise_shares=4)


DISTRIBUTED = {"scenario": "fed-heart-disease", **DISTRIBUTED_NOISE}


def test_a_distributed_run_config_holds_as_many_shares_as_min_contributors() -> None:
    config = parse_run_config(DISTRIBUTED)
    assert config.dp_noise_shares == 4
    assert parse_run_config({**DISTRIBUTED, "dp-noise": "local"}).dp_noise_shares == 1


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"encryption": "none"}, "encryption = ckks"),
        ({"min-contributors": 1}, "min-contributors >= 2"),
        ({"local-steps": 3}, "local-steps = 1"),
        ({"dp-sample-rate": 0}, "dp-sample-rate > 0"),
        ({"aggregation-weight": "examples"}, 'aggregation-weight = "batch"'),
        ({"local-steps-policy": "epoch"}, 'local-steps-policy = "fixed"'),
        ({"strategy": "fedprox", "proximal-mu": 0.01}, 'strategy = "fedavg"'),
        ({"dp": False}, "dp = true"),
        ({"optimizer": "adam"}, 'optimizer = "sgd"'),
    ],
)
def test_distributed_noise_refuses_a_run_where_the_shares_would_not_add_up(
    change: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match="dp-noise distributed needs") as error:
        parse_run_config({**DISTRIBUTED, **change})
    assert says in str(error.value)


def test_the_ledger_says_which_spends_assumed_distributed_noise(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    _one_round(ledger, 30, sample_rate=0.2, noise_shares=5)
    _one_round(ledger, 30, sample_rate=0.2, run_id="2")
    shares = [(s.run_id, s.mechanism, s.noise_shares) for s in ledger.spends()]
    assert shares == [
        ("1", "noisy-count", 1),
        ("1", "dp-sgd", 5),
        ("2", "noisy-count", 1),
        ("2", "dp-sgd", 1),
    ]


def test_a_ledger_from_before_distributed_noise_reads_as_local_noise(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE spends (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
            "server_round INTEGER NOT NULL, steps INTEGER NOT NULL, sample_rate REAL NOT NULL, "
            "noise_multiplier REAL NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL, "
            "epsilon_after REAL NOT NULL, history_after TEXT NOT NULL, recorded_at TEXT NOT NULL, "
            "mechanism TEXT NOT NULL DEFAULT 'dp-sgd', released TEXT)"
        )
        old.execute(
            "INSERT INTO spends (run_id, server_round, steps, sample_rate, noise_multiplier, "
            "delta, accountant, epsilon_after, history_after, recorded_at) VALUES "
            "('1', 1, 5, 0.1, 2.0, 0.001, 'rdp', 0.5, '[[2.0, 0.1, 5]]', 'then')"
        )
    (spend,) = PrivacyLedger(path).spends()
    assert spend.noise_shares == 1 and spend.noise_multiplier == 2.0


def test_encrypted_calibration_sums_add_up_to_the_plaintext_sums_and_only_the_key_reads_them() -> (
    None
):
    from countyfl.privacy.calibration import (
        CalibrationSums,
        decrypt_sums,
        encrypt_sums,
        sum_encrypted_sums,
    )
    from countyfl.privacy.he.keys import create_secret_context, public_copy

    secret = create_secret_context()
    public = public_copy(secret)
    sites = [CalibrationSums(12.4 + i, 40.25 - i, 100.2 * i, 300.0) for i in range(5)]
    ciphertexts = [encrypt_sums(secret, s).tobytes() for s in sites]
    total = sum_encrypted_sums(public, ciphertexts)
    decrypted = decrypt_sums(secret, total, rows=1500.0)
    # The key holder rounds the decrypted sums to whole records (72.0, 191.25, 1002.0)
    assert decrypted.positives == round(sum(s.positives for s in sites)) == 72
    assert decrypted.risk == round(sum(s.risk for s in sites)) == 191
    assert decrypted.spread == round(sum(s.spread for s in sites)) == 1002
    assert decrypted.rows == 1500.0
    with pytest.raises(ValueError):  # the county's context cannot read the sum
        decrypt_sums(public, total, rows=1500.0)
    with pytest.raises(ValueError, match="no encrypted calibration sums"):
        sum_encrypted_sums(public, [])


def test_the_guard_lets_encrypted_calibration_sums_out_only_as_one_ciphertext() -> None:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    from countyfl import protocol
    from countyfl.federation.release_guard import release_problems
    from countyfl.privacy.release import Phase, inventory

    fields = inventory(encrypted=True, dp=True, calibration=True, distributed=True)

    def reply(record: ArrayRecord, **metrics: float) -> Any:
        from flwr.app import DEFAULT_TTL, Message, Metadata

        content = RecordDict(
            {
                protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 10, **metrics}),
                protocol.CALIBRATION_SUMS: record,
            }
        )
        metadata = Metadata(
            run_id=7,
            message_id="evaluate-1",
            src_node_id=11,
            dst_node_id=0,
            reply_to_message_id="",
            group_id="1",
            created_at=0.0,
            ttl=DEFAULT_TTL,
            message_type="evaluate",
        )
        return Message(content=content, metadata=metadata)

    good = ArrayRecord({protocol.CIPHERTEXT: Array(np.zeros(130_000, dtype=np.uint8))})
    assert release_problems(reply(good), Phase.EVALUATE, fields) == []
    plain = ArrayRecord({protocol.CIPHERTEXT: Array(np.zeros(3, dtype=np.float64))})
    assert "must be CKKS ciphertexts" in release_problems(reply(plain), Phase.EVALUATE, fields)[0]
    # Three plaintext floats seen as bytes are 24 bytes, not a ciphertext
    raw = np.array([40.0, 12.0, 30.0]).view(np.uint8)
    as_bytes = ArrayRecord({protocol.CIPHERTEXT: Array(raw)})
    assert (
        "must be CKKS ciphertexts" in release_problems(reply(as_bytes), Phase.EVALUATE, fields)[0]
    )
    # Under distributed noise the plaintext sums are not in the inventory at all.
    leaked = release_problems(
        reply(good, **{protocol.CALIBRATION_POSITIVES: 40.0}), Phase.EVALUATE, fields
    )
    assert leaked == ["evaluate:metrics.calibration-positives is not in the release inventory"]


def test_one_step_weighted_by_its_divisor_is_minus_lr_times_the_clipped_gradient_sum() -> None:
    """The linearity the analysis rests on, with real gradients: without noise, at rate 1
    (every row in the batch), ``b (w' - w) = -lr sum_j clip(grad_j)`` exactly, whatever the
    momentum setting (a fresh optimizer's first step has no momentum) and for a divisor
    ``b`` other than the batch."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 6)).astype(np.float32) * 3
    y = (rng.random(20) < 0.4).astype(np.float32)
    model = nn.Linear(6, 1)
    start_w = model.weight.detach().numpy().astype(np.float64).ravel().copy()
    start_b = float(model.bias.detach().numpy()[0])

    class Squeezed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = model

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return self.linear(rows).squeeze(-1)

    plan = TrainingPlan(local_steps=1, batch_size=20, learning_rate=0.5, momentum=0.9)
    privacy = PrivacyPlan(0.0, 1.0, AccountantName.RDP, sample_rate=1.0, expected_batch_size=7)
    train_private(Squeezed(), x, y, plan, privacy, [])
    # Per-example gradients of the logistic loss, clipped to norm 1, summed
    p = 1 / (1 + np.exp(-(x.astype(np.float64) @ start_w + start_b)))
    grads = np.hstack([(p - y)[:, None] * x, (p - y)[:, None]])
    grads /= np.maximum(1.0, np.linalg.norm(grads, axis=1))[:, None]
    expected = -0.5 * grads.sum(axis=0)
    moved = np.append(model.weight.detach().numpy().ravel() - start_w, model.bias.item() - start_b)
    np.testing.assert_allclose(7 * moved, expected, atol=1e-5)


def test_sites_with_their_own_delta_still_calibrate_the_runs_sigma(tmp_path: Path) -> None:
    spends = []
    for site, delta in enumerate((1e-3, 1e-5)):
        spend = _one_round(
            PrivacyLedger(tmp_path / f"site-{site}" / "ledger.sqlite"),
            40,
            budget=Budget(10.0, delta),
            sample_rate=0.2,
            noise_shares=2,
            calibration_delta=1e-3,
        )
        spends.append(spend)
        # Each ledger accounts at the site's own delta: the stricter site spends more.
        history = [gaussian_entry(10.0), (spend.noise_multiplier, 0.2, 1)]
        assert spend.epsilon_after == pytest.approx(
            epsilon_of(history, delta, AccountantName.RDP), rel=1e-6
        )
    assert spends[0].noise_multiplier == spends[1].noise_multiplier
    assert spends[1].epsilon_after > spends[0].epsilon_after
