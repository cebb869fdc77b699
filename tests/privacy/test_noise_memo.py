"""The site's calibrated noise multipliers, kept across the processes of its node."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as rdp_analysis

from countyfl.models import LogisticRegression
from countyfl.privacy import accounting as accounting_module
from countyfl.privacy import budget as budget_module
from countyfl.privacy.accounting import gaussian_entry, poisson_sample_rate
from countyfl.privacy.budget import calibrated_noise, train_within_budget
from countyfl.privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger
from countyfl.privacy.modes import AccountantName, DpRandomness, GradSampleMode, Mechanism
from countyfl.privacy.noise_memo import MEMO_DIR, NoiseMemo, RdpVectorMemo
from countyfl.privacy.randomness import round_generators
from countyfl.training.plan import TrainingPlan

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

RDP = AccountantName.RDP
DELTA = 1e-5
COUNT_NOISE = 50.0
ROWS, BATCH = 40, 8
_rng = np.random.default_rng(0)
X = _rng.normal(size=(ROWS, 3)).astype(np.float32)
Y = (_rng.random(ROWS) < 0.5).astype(np.float32)
PARAMETERS = [1.0, DELTA, 0.2, 10, "rdp", [[50.0, 1.0, 1]]]


def _round(state_dir: Path, run_id: str, memo: NoiseMemo | None) -> float:
    spend = train_within_budget(
        institution_id="hospital-7",
        ledger=PrivacyLedger(state_dir / LEDGER_FILE),
        budget=Budget(10.0, DELTA),
        run_id=run_id,
        server_round=1,
        model=LogisticRegression(3),
        x=X,
        y=Y,
        plan=TrainingPlan(local_steps=2, batch_size=BATCH, learning_rate=0.1),
        target_epsilon=1.0,
        steps_per_run=4,
        max_grad_norm=1.0,
        accountant=RDP,
        grad_sample_mode=GradSampleMode.HOOKS,
        count_noise=COUNT_NOISE,
        generators=round_generators(
            DpRandomness.SEEDED, seed=0, institution="hospital-7", server_round=1
        ),
        noise_memo=memo,
    )
    return spend.noise_multiplier


def test_a_new_process_of_the_node_reuses_the_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _round(tmp_path, "run-1", NoiseMemo(tmp_path))
    # A new task process: its in-process memo is empty, and calibrating would fail.
    calibrated_noise.cache_clear()

    def no_calibration(*args: object) -> float:
        raise AssertionError("calibrated again")

    monkeypatch.setattr(budget_module, "noise_multiplier_for", no_calibration)
    assert _round(tmp_path, "run-2", NoiseMemo(tmp_path)) == first
    with pytest.raises(AssertionError, match="calibrated again"):
        _round(tmp_path, "run-3", None)
    # What was stored is the calibration itself.
    monkeypatch.undo()
    calibrated_noise.cache_clear()
    released = PrivacyLedger(tmp_path / LEDGER_FILE).released("run-1", Mechanism.NOISY_COUNT)
    assert released is not None
    rate = poisson_sample_rate(int(released["num-examples"]), BATCH)
    assert first == calibrated_noise(1.0, DELTA, rate, 4, RDP, (gaussian_entry(COUNT_NOISE),))


def test_the_memo_is_owner_only(tmp_path: Path) -> None:
    os.umask(0o022)
    NoiseMemo(tmp_path).put(PARAMETERS, 1.5)
    folder = tmp_path / MEMO_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (entry,) = folder.iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert NoiseMemo(tmp_path).get(PARAMETERS) == 1.5


@pytest.mark.parametrize(
    "stored",
    [
        {"parameters": [2.0, *PARAMETERS[1:]], "noise_multiplier": 1.5},  # other parameters
        {"parameters": PARAMETERS, "noise_multiplier": 0.0},
        {"parameters": PARAMETERS, "noise_multiplier": float("nan")},
        {"parameters": PARAMETERS, "noise_multiplier": True},
        {"parameters": PARAMETERS},
        "not json {",
    ],
)
def test_a_file_that_is_not_this_calibration_is_a_miss(tmp_path: Path, stored: object) -> None:
    memo = NoiseMemo(tmp_path)
    memo.put(PARAMETERS, 1.5)
    (entry,) = (tmp_path / MEMO_DIR).iterdir()
    entry.write_text(stored if isinstance(stored, str) else json.dumps(stored))
    assert memo.get(PARAMETERS) is None
    assert memo.calibrate(PARAMETERS, lambda: 2.5) == 2.5
    assert memo.get(PARAMETERS) == 2.5


def test_the_memo_keeps_a_bounded_number_of_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("countyfl.privacy.noise_memo.MAX_ENTRIES", 3)
    memo = NoiseMemo(tmp_path)
    for steps in range(5):
        memo.put([*PARAMETERS[:3], steps, *PARAMETERS[4:]], 1.0 + steps)
    assert len(list((tmp_path / MEMO_DIR).iterdir())) == 3


def test_a_new_process_of_the_node_reuses_the_rdp_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accountant's one-step RDP vectors (the PRV domain's bounds, RDP's epsilon) are
    kept in the site's state folder: a new task process computes none of them again."""
    accounting_module._rdp_of_one_step.cache_clear()  # a fresh process
    accounting_module._epsilon.cache_clear()
    calibrated_noise.cache_clear()
    first = _round(tmp_path, "run-1", NoiseMemo(tmp_path))
    stored = [
        json.loads(path.read_text())
        for path in (tmp_path / MEMO_DIR).iterdir()
        if "rdp" in json.loads(path.read_text())
    ]
    assert stored, "no RDP vector was kept"
    for record in stored:
        _, sigma, q, orders = record["parameters"]
        expected = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders)
        assert record["rdp"] == [float(v) for v in expected]
    # A new task process: in-process memos empty, and computing an RDP vector would fail.
    accounting_module._rdp_of_one_step.cache_clear()
    accounting_module._epsilon.cache_clear()
    calibrated_noise.cache_clear()

    def no_rdp(**kwargs: object) -> object:
        raise AssertionError("computed an RDP vector again")

    monkeypatch.setattr(rdp_analysis, "compute_rdp", no_rdp)
    spends_before = len(PrivacyLedger(tmp_path / LEDGER_FILE).spends())
    assert _round(tmp_path, "run-2", NoiseMemo(tmp_path)) == first
    assert len(PrivacyLedger(tmp_path / LEDGER_FILE).spends()) > spends_before  # accounted
    # Without the memo (a simulation's process), the vectors are computed as before.
    accounting_module._rdp_of_one_step.cache_clear()
    accounting_module._epsilon.cache_clear()
    with pytest.raises(AssertionError, match="computed an RDP vector again"):
        _round(tmp_path, "run-3", None)


@pytest.mark.parametrize(
    "values", [[1.0, "x"], [1.0, -0.5], [1.0, float("nan")], "not a list", [True]]
)
def test_a_stored_rdp_vector_that_is_not_one_is_a_miss(tmp_path: Path, values: object) -> None:
    memo = RdpVectorMemo(tmp_path)
    parameters = ["rdp-one-step", 2.0, 0.1, [2.0, 3.0]]
    memo.put(parameters, [0.5, float("inf")])
    assert memo.get(parameters) == [0.5, float("inf")]
    (entry,) = (tmp_path / MEMO_DIR).iterdir()
    entry.write_text(json.dumps({"parameters": parameters, "rdp": values}))
    assert memo.get(parameters) is None
