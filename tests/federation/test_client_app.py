"""The ClientApp's handlers called directly (no Flower process): DP calibration per run,
secret randomness, what a reply carries, and the ledger behind it.

Fed-Heart-Disease's smallest hospital (Switzerland, partition 2, 30 training rows) keeps
these fast; the RDP accountant is used where PRV's calls would be too slow.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import (
    DEFAULT_TTL,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from opacus.accountants import PRVAccountant, RDPAccountant

from countyfl import models, protocol, scenarios
from countyfl.federation.client_app import make_client_app
from countyfl.privacy.accounting import poisson_sample_rate
from countyfl.privacy.ledger import LEDGER_FILE, PrivacyLedger
from countyfl.run_config import RunConfig, parse_run_config

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

SWITZERLAND = 2
ROWS = 30  # Switzerland's training rows


def _config(sites: Path, **overrides: Any) -> RunConfig:
    values = {
        **scenarios.get("fed-heart-disease").defaults,
        "sites-dir": str(sites),
        "num-server-rounds": 3,
        "local-steps": 2,
        "accountant": "rdp",
        **overrides,
    }
    return parse_run_config(values)


def _instruction(content: RecordDict, message_type: str, server_round: int) -> Message:
    metadata = Metadata(
        run_id=7,
        message_id=f"{message_type}-{server_round}",
        src_node_id=0,
        dst_node_id=11,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


def _context(config: RunConfig, partition: int = SWITZERLAND) -> Context:
    return Context(
        run_id=7,
        node_id=11,
        node_config={protocol.PARTITION_ID: partition},
        state=RecordDict(),
        run_config=config.to_run_config(),
    )


def _initial(config: RunConfig) -> ArrayRecord:
    torch.manual_seed(config.seed)  # as the ServerApp builds the initial model
    return ArrayRecord(models.build(config.model, 13).state_dict())


def _train(config: RunConfig, arrays: ArrayRecord, server_round: int) -> Message:
    content = RecordDict(
        {
            protocol.ARRAYS: arrays,
            protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: server_round}),
        }
    )
    return make_client_app(config)(
        _instruction(content, MessageType.TRAIN, server_round), _context(config)
    )


def _flat(reply: Message) -> np.ndarray:
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return np.concatenate([a.numpy().ravel() for a in reply.content[protocol.ARRAYS].values()])


def _run(config: RunConfig) -> list[Message]:
    """Every round of one run at one institution, each round starting from its own update."""
    arrays, replies = _initial(config), []
    for server_round in range(1, config.num_server_rounds + 1):
        reply = _train(config, arrays, server_round)
        replies.append(reply)
        arrays = reply.content[protocol.ARRAYS]
    return replies


def _ledger(config: RunConfig) -> PrivacyLedger:
    return PrivacyLedger(Path(config.sites_dir) / "switzerland" / LEDGER_FILE)


# -- calibration: exactly local steps x rounds, at the rate the sampler uses --------------


def test_a_run_spends_its_target_epsilon_exactly_over_all_its_rounds(tmp_path: Path) -> None:
    # Calibrated per run: the last round lands on the target (within the calibration's
    # tolerance). Calibrating per round would overshoot it about threefold; calibrating for
    # twice the steps would stop well short of it.
    config = _config(tmp_path / "sites", **{"target-epsilon": 1.0})
    replies = _run(config)
    epsilons = [float(r.content[protocol.METRICS][protocol.EPSILON]) for r in replies]
    assert epsilons == sorted(epsilons)
    assert config.target_epsilon - 0.006 <= epsilons[-1] <= config.target_epsilon
    assert epsilons[0] < 0.8 * config.target_epsilon


def test_every_round_uses_the_rate_of_the_runs_noisy_count(tmp_path: Path) -> None:
    config = _config(tmp_path / "sites")
    replies = _run(config)
    counts = {int(r.content[protocol.METRICS][protocol.NUM_EXAMPLES]) for r in replies}
    assert len(counts) == 1  # one noisy count per run, reused by every round
    (count,) = counts
    released = _ledger(config).released("7", mechanism=_noisy_count())
    assert released == {"num-examples": count}
    rate = poisson_sample_rate(count, config.batch_size)
    for reply in replies:
        assert reply.content[protocol.METRICS][protocol.SAMPLE_RATE] == pytest.approx(rate)
    steps = [s for s in _ledger(config).spends() if s.mechanism == "dp-sgd"]
    assert [s.sample_rate for s in steps] == [rate] * config.num_server_rounds
    assert sum(s.steps for s in steps) == config.dp_steps_per_run


def _noisy_count() -> Any:
    from countyfl.privacy.modes import Mechanism

    return Mechanism.NOISY_COUNT


@pytest.mark.parametrize("accountant", [RDPAccountant, PRVAccountant])
def test_the_reported_epsilon_is_recomputed_from_the_ledgers_rows(
    tmp_path: Path, accountant: type
) -> None:
    # Independently of countyfl's accounting code: the spends table's rows (noise, rate,
    # steps), in order, fed to a fresh Opacus accountant, give what the site reported.
    name = "rdp" if accountant is RDPAccountant else "prv"
    config = _config(tmp_path / "sites", **{"accountant": name, "num-server-rounds": 2})
    replies = _run(config)
    path = Path(config.sites_dir) / "switzerland" / LEDGER_FILE
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT noise_multiplier, sample_rate, steps, mechanism FROM spends ORDER BY id"
        ).fetchall()
    assert [row[3] for row in rows] == ["noisy-count", "dp-sgd", "dp-sgd"]
    fresh = accountant()
    fresh.history = [(float(n), float(q), int(s)) for n, q, s, _ in rows]
    recomputed = fresh.get_epsilon(delta=config.delta)
    reported = float(replies[-1].content[protocol.METRICS][protocol.EPSILON])
    assert reported == pytest.approx(recomputed, rel=1e-6)


# -- randomness: secret by default, reproducible only when asked -------------------------


def test_the_seed_and_the_data_do_not_reproduce_an_update(tmp_path: Path) -> None:
    # Two institutions with the same rows, the same run seed and the same global model:
    # their updates differ by about the noise, so whoever knows the seed cannot replay one.
    config = _config(tmp_path / "a")
    other = _config(tmp_path / "b")
    first = _flat(_train(config, _initial(config), 1))
    second = _flat(_train(other, _initial(other), 1))
    start = np.concatenate([a.numpy().ravel() for a in _initial(config).values()])
    moved = np.linalg.norm(first - start)
    difference = np.linalg.norm(first - second)
    assert difference > 0.1 * moved
    assert difference < 10 * moved


def test_seeded_randomness_reproduces_an_update_bit_for_bit(tmp_path: Path) -> None:
    config = _config(tmp_path / "a", **{"dp-randomness": "seeded"})
    other = _config(tmp_path / "b", **{"dp-randomness": "seeded"})
    np.testing.assert_array_equal(
        _flat(_train(config, _initial(config), 1)), _flat(_train(other, _initial(other), 1))
    )


def test_training_draws_nothing_from_torchs_global_generator(tmp_path: Path) -> None:
    config = _config(tmp_path / "sites")
    arrays = _initial(config)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    _flat(_train(config, arrays, 1))
    assert torch.equal(torch.get_rng_state(), state)


# -- what a reply carries -----------------------------------------------------------------


def test_a_train_reply_carries_no_loss_and_no_exact_count(tmp_path: Path) -> None:
    config = _config(tmp_path / "sites", **{"count-noise": 10.0})
    counts = set()
    for attempt in range(4):
        run = _config(tmp_path / f"sites-{attempt}", **{"count-noise": 10.0})
        reply = _train(run, _initial(run), 1)
        metrics = reply.content[protocol.METRICS]
        assert set(metrics) == {
            protocol.NUM_EXAMPLES,
            protocol.PARTITION_ID,
            protocol.EPSILON,
            protocol.BUDGET_EPSILON,
            protocol.DELTA,
            protocol.NOISE_MULTIPLIER,
            protocol.SAMPLE_RATE,
            protocol.AGGREGATION_WEIGHT,
        }
        assert metrics[protocol.BUDGET_EPSILON] == run.budget_epsilon  # the site's own
        # FedAvg's weight (the default): the noisy count
        assert metrics[protocol.AGGREGATION_WEIGHT] == metrics[protocol.NUM_EXAMPLES]
        counts.add(int(metrics[protocol.NUM_EXAMPLES]))
    # The count is noisy (standard deviation 10 around 30): four draws are not all exact.
    assert counts != {ROWS}
    assert config.count_noise == 10.0


def test_an_exception_leaves_the_site_as_its_kind_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from countyfl.federation import client_app

    def leaky(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("patient 4711 has cholesterol 287")

    monkeypatch.setattr(client_app, "train_within_budget", leaky)
    config = _config(tmp_path / "sites")
    reply = _train(config, _initial(config), 1)
    assert reply.has_error()
    assert reply.error.code == protocol.SITE_FAILURE_ERROR_CODE
    assert "RuntimeError" in reply.error.reason
    assert "4711" not in reply.error.reason and "287" not in reply.error.reason


# -- the release guard --------------------------------------------------------------------


def _guarded(config: RunConfig, reply_content: RecordDict) -> Message:
    """A ClientApp whose train handler replies ``reply_content``, behind the release guard."""
    from flwr.clientapp import ClientApp

    from countyfl.federation.release_guard import release_guard_mod

    app = ClientApp(mods=[release_guard_mod])

    @app.train()
    def handler(msg: Message, context: Context) -> Message:
        return Message(content=reply_content, reply_to=msg)

    content = RecordDict({protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: 1})})
    return app(_instruction(content, MessageType.TRAIN, 1), _context(config))


def _metrics(**extra: float) -> MetricRecord:
    return MetricRecord(
        {
            protocol.NUM_EXAMPLES: 31,
            protocol.PARTITION_ID: 2,
            protocol.EPSILON: 0.4,
            protocol.DELTA: 1e-3,
            protocol.NOISE_MULTIPLIER: 3.0,
            protocol.SAMPLE_RATE: 0.5,
            **extra,
        }
    )


def test_the_guard_sends_a_reply_that_is_all_in_the_inventory(tmp_path: Path) -> None:
    config = _config(tmp_path)
    reply = _guarded(
        config, RecordDict({protocol.ARRAYS: _initial(config), protocol.METRICS: _metrics()})
    )
    assert not reply.has_error()


@pytest.mark.parametrize(
    "extra", [{"train-loss": 0.52}, {"num-rows-exact": 30.0}], ids=["loss", "exact-count"]
)
def test_the_guard_refuses_a_field_the_inventory_lacks(
    tmp_path: Path, extra: dict[str, float]
) -> None:
    config = _config(tmp_path)
    content = RecordDict({protocol.ARRAYS: _initial(config), protocol.METRICS: _metrics(**extra)})
    reply = _guarded(config, content)
    assert reply.has_error() and reply.error.code == protocol.SITE_FAILURE_ERROR_CODE
    (name,) = extra
    assert f"train:metrics.{name} is not in the release inventory" in reply.error.reason
    assert str(extra[name]) not in reply.error.reason


def test_the_guard_refuses_plaintext_weights_in_an_encrypted_run(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        **{"encryption": "ckks", "he-secret-context": "s.ckks", "he-public-context": "p.ckks"},
    )
    reply = _guarded(
        config, RecordDict({protocol.ARRAYS: _initial(config), protocol.METRICS: _metrics()})
    )
    assert reply.has_error()
    assert "must be CKKS ciphertexts" in reply.error.reason


# -- a deployed site never runs seeded noise ------------------------------------------------


def test_a_deployed_site_refuses_seeded_randomness_even_if_approved(tmp_path: Path) -> None:
    from countyfl.deployment import approve_task
    from countyfl.deployment.site import render_site_toml
    from countyfl.deployment.site_data import export_hospital_csv
    from countyfl.deployment.tasks import manifest_for

    export_hospital_csv("Switzerland", tmp_path / "export.csv")
    site = tmp_path / "site.toml"
    site.write_text(
        render_site_toml(
            institution_id="switzerland",
            name="Switzerland",
            level="county",
            data_path="export.csv",
            budget_epsilon=8.0,
            delta=1e-3,
        ),
        encoding="utf-8",
    )
    config = _config(site.parent / "unused", **{"dp-randomness": "seeded"})
    approve_task(site, manifest_for(config), approved_by="site-lead")
    context = Context(
        run_id=7,
        node_id=11,
        node_config={protocol.SITE_CONFIG: str(site)},
        state=RecordDict(),
        run_config=config.to_run_config(),
    )
    content = RecordDict(
        {
            protocol.ARRAYS: _initial(config),
            protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: 1}),
        }
    )
    reply = make_client_app()(_instruction(content, MessageType.TRAIN, 1), context)
    assert reply.has_error() and reply.error.code == protocol.REFUSED_ERROR_CODE
    assert "seed" in reply.error.reason and "switzerland" in reply.error.reason
    assert not (site.parent / "site-state" / LEDGER_FILE).exists()


def test_countyfl_run_refuses_seeded_randomness(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from countyfl.cli import app

    result = CliRunner().invoke(
        app,
        [
            "run",
            "--state-dir",
            str(tmp_path),
            "-o",
            str(tmp_path / "out"),
            "-c",
            'dp-randomness="seeded"',
        ],
    )
    assert result.exit_code == 2
    assert "reproducible simulations" in result.output


def test_a_warm_process_sees_a_site_toml_changed_since_it_loaded_it(tmp_path: Path) -> None:
    # A node's template loads site.toml and the export once; an approval appended later
    # (and a new export) must count for the next task all the same.
    from countyfl.deployment import approve_task
    from countyfl.deployment.site import render_site_toml
    from countyfl.deployment.site_data import export_hospital_csv
    from countyfl.deployment.tasks import manifest_for
    from countyfl.federation.client_app import _deployed_site, warm_site

    export_hospital_csv("Switzerland", tmp_path / "export.csv")
    site = tmp_path / "site.toml"
    site.write_text(
        render_site_toml(
            institution_id="switzerland",
            name="Switzerland",
            level="county",
            data_path="export.csv",
            budget_epsilon=8.0,
            delta=1e-3,
        ),
        encoding="utf-8",
    )
    warm_site(str(site))
    loaded, data = _deployed_site(str(site.resolve()))
    assert loaded.approved_tasks == ()
    assert _deployed_site(str(site.resolve()))[1] is data  # unchanged files: not read again
    approve_task(site, manifest_for(_config(tmp_path)), approved_by="site-lead")
    assert len(_deployed_site(str(site.resolve()))[0].approved_tasks) == 1
    export_hospital_csv("Cleveland", tmp_path / "export.csv")
    assert _deployed_site(str(site.resolve()))[1].num_train > data.num_train


def test_a_deployed_site_calibrates_a_runs_noise_once_for_all_its_processes(
    tmp_path: Path,
) -> None:
    # Each message at a node is a new process: the calibration is kept in the site's
    # state folder (countyfl.privacy.noise_memo), not only in the process that made it.
    from countyfl.deployment import approve_task
    from countyfl.deployment.site import render_site_toml
    from countyfl.deployment.site_data import export_hospital_csv
    from countyfl.deployment.tasks import manifest_for
    from countyfl.privacy.budget import calibrated_noise
    from countyfl.privacy.noise_memo import MEMO_DIR

    export_hospital_csv("Switzerland", tmp_path / "export.csv")
    site = tmp_path / "site.toml"
    site.write_text(
        render_site_toml(
            institution_id="switzerland",
            name="Switzerland",
            level="county",
            data_path="export.csv",
            budget_epsilon=8.0,
            delta=1e-3,
        ),
        encoding="utf-8",
    )
    config = _config(site.parent / "unused")
    approve_task(site, manifest_for(config), approved_by="site-lead")
    context = Context(
        run_id=7,
        node_id=11,
        node_config={protocol.SITE_CONFIG: str(site)},
        state=RecordDict(),
        run_config=config.to_run_config(),
    )
    content = RecordDict(
        {
            protocol.ARRAYS: _initial(config),
            protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: 1}),
        }
    )
    calibrated_noise.cache_clear()
    reply = make_client_app()(_instruction(content, MessageType.TRAIN, 1), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    # The folder also keeps the accountant's RDP vectors; one calibration of this run.
    records = [json.loads(p.read_text()) for p in (site.parent / "site-state" / MEMO_DIR).iterdir()]
    (calibration,) = [record for record in records if "noise_multiplier" in record]
    noise = reply.content[protocol.METRICS][protocol.NOISE_MULTIPLIER]
    assert calibration["noise_multiplier"] == noise


def test_a_noise_aware_weight_is_computed_from_what_the_site_paid_for(tmp_path: Path) -> None:
    from countyfl.privacy.weighting import AggregationWeight, aggregation_weight

    config = _config(tmp_path / "sites", **{"aggregation-weight": "noise-aware"})
    metrics = _train(config, _initial(config), 1).content[protocol.METRICS]
    count = int(metrics[protocol.NUM_EXAMPLES])
    expected = aggregation_weight(
        AggregationWeight.NOISE_AWARE,
        count,
        float(metrics[protocol.NOISE_MULTIPLIER]),
        float(metrics[protocol.SAMPLE_RATE]),
        config.local_steps,
        14,  # the logistic regression's 13 weights and its bias
    )
    assert metrics[protocol.AGGREGATION_WEIGHT] == expected
    # Switzerland's rows need much noise at this epsilon: the weight of its 30 rows at the
    # noise it drew is far below 30. (Not of the noisy count itself, which is random: a
    # draw of 2 gives the floor of 1, which is not below 2 / 2.)
    at_thirty = aggregation_weight(
        AggregationWeight.NOISE_AWARE,
        30,
        float(metrics[protocol.NOISE_MULTIPLIER]),
        float(metrics[protocol.SAMPLE_RATE]),
        config.local_steps,
        14,
    )
    assert 1 <= at_thirty < 15
