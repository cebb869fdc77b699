"""The ServerApp's handler run against the real ClientApp in this process (no Flower process).

An in-process Grid delivers each message to the ClientApp of the node it is addressed to,
with that node's own Context, exactly as a SuperLink would hand them over: the whole round
logic of the county node (the strategy, the history, the run folder) is exercised in
seconds, in plaintext and under CKKS.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import DEFAULT_TTL, Context, Error, Message, Metadata, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx

from countyfl import scenarios
from countyfl.federation.grid import PromptGrid
from countyfl.federation.progress import NodesMissingError
from countyfl.federation.server_app import build_strategy, run_federation
from countyfl.federation.strategies.encrypted import EncryptedFedAvg, EncryptedFedProx
from countyfl.federation.strategies.recording import RecordingStrategy
from countyfl.federation.strategies.weighted import WeightedFedAvg, WeightedFedProx
from countyfl.privacy.he.keys import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE, init_keys
from countyfl.publishing import PublishError, publish
from countyfl.run_config import RunConfig
from countyfl.runs import (
    EVENTS_FILE,
    FINAL_AGGREGATE_FILE,
    FINAL_MODEL_FILE,
    EventKind,
    EventReader,
    FederationHistory,
    RunRecord,
)
from tests.federation.support import InProcessGrid, act_as_server_task, heart_config

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    act_as_server_task(monkeypatch)


_config = heart_config


def _ckks(tmp_path: Path) -> dict[str, str]:
    init_keys(tmp_path / "keys")
    return {
        "encryption": "ckks",
        "he-secret-context": str(tmp_path / "keys" / SECRET_CONTEXT_FILE),
        "he-public-context": str(tmp_path / "keys" / PUBLIC_CONTEXT_FILE),
    }


@pytest.mark.parametrize(
    ("overrides", "inner"),
    [
        ({}, WeightedFedAvg),
        ({"strategy": "fedprox", "proximal-mu": 0.1}, WeightedFedProx),
    ],
    ids=["fedavg", "fedprox"],
)
def test_build_strategy_wraps_flowers_own_strategy(
    tmp_path: Path, overrides: dict[str, Any], inner: type
) -> None:
    strategy = build_strategy(_config(tmp_path, **overrides), 4, 14)
    assert isinstance(strategy, RecordingStrategy)
    assert type(strategy.strategy) is inner
    # Flower's own, training replies weighted by each site's aggregation weight
    assert isinstance(strategy.strategy, FedProx if inner is WeightedFedProx else FedAvg)


def test_build_strategy_under_ckks_holds_the_public_context_only(tmp_path: Path) -> None:
    ckks = _ckks(tmp_path)
    plain = build_strategy(_config(tmp_path, **ckks), 4, 14)
    prox = build_strategy(
        _config(tmp_path, **ckks, strategy="fedprox", **{"proximal-mu": 0.1}), 4, 14
    )
    assert type(plain.strategy) is EncryptedFedAvg
    assert type(prox.strategy) is EncryptedFedProx
    assert not plain.strategy.context.is_private()  # type: ignore[attr-defined]
    assert not prox.strategy.context.is_private()  # type: ignore[attr-defined]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "ckks"])
def test_a_run_writes_its_history_record_and_final_model(tmp_path: Path, encrypted: bool) -> None:
    config = _config(tmp_path, **(_ckks(tmp_path) if encrypted else {}))
    grid = InProcessGrid(config, 4)
    ended: list[int] = []
    run_federation(grid, config, ended.append, run_id="3")

    assert ended == [1, 2]
    assert grid.delivered.count("train") == grid.delivered.count("evaluate") == 8
    output = Path(config.output_dir)
    history = FederationHistory.read(output / "history.json")
    assert sorted(history.rounds) == [1, 2]
    assert sorted(history.institution_names().values()) == [
        "cleveland",
        "hungary",
        "switzerland",
        "va-long-beach",
    ]
    for record in history.rounds.values():
        assert record.failures == []
        assert len(record.train) == len(record.evaluate) == 4
    run = RunRecord.read(output)
    assert run.run_id == "3" and run.run_config() == config and run.num_values == 14
    assert (output / FINAL_AGGREGATE_FILE).is_file() == encrypted
    assert (output / FINAL_MODEL_FILE).is_file() == (not encrypted)
    secret = Path(config.he_secret_context) if encrypted else None
    metadata = publish(output, secret_context_path=secret)
    assert metadata["rounds"] == 2 and sorted(metadata["privacy"]) == sorted(
        history.institution_names().values()
    )
    with np.load(output / "published" / "model.npz") as model:
        assert all(np.isfinite(model[name]).all() for name in model.files)


@pytest.mark.parametrize(
    "strategy",
    [{"strategy": "fedavg"}, {"strategy": "fedprox", "proximal-mu": 0.5}],
    ids=["fedavg", "fedprox"],
)
def test_ckks_aggregation_gives_the_plaintext_model_round_after_round(
    tmp_path: Path, strategy: dict[str, Any]
) -> None:
    """Oracle: the same run, aggregated encrypted and in plaintext, publishes the same model
    (within CKKS's error), and every institution evaluates the same global model each round.
    (``tests/test_cli.py`` runs the same oracle through ``countyfl simulate``.)"""
    models: dict[str, dict[str, np.ndarray]] = {}
    histories: dict[str, FederationHistory] = {}
    for name, encryption in (("plain", {}), ("ckks", _ckks(tmp_path))):
        config = _config(tmp_path / name, dp=False, seed=42, **strategy, **encryption)
        run_federation(InProcessGrid(config, 4), config, lambda _: None, run_id="3")
        output = Path(config.output_dir)
        assert (output / FINAL_AGGREGATE_FILE).is_file() == bool(encryption)
        secret = Path(config.he_secret_context) if encryption else None
        publish(output, secret_context_path=secret)
        with np.load(output / "published" / "model.npz") as model:
            models[name] = {key: model[key] for key in model.files}
        histories[name] = FederationHistory.read(output / "history.json")
    assert models["plain"] and models["plain"].keys() == models["ckks"].keys()
    assert sorted(histories["plain"].rounds) == [1, 2]
    for key, expected in models["plain"].items():
        np.testing.assert_allclose(models["ckks"][key], expected, atol=1e-4)
    for server_round, record in histories["plain"].rounds.items():
        encrypted = histories["ckks"].rounds[server_round]
        assert sorted(encrypted.evaluate) == sorted(record.evaluate)
        for site, metrics in record.evaluate.items():
            assert encrypted.evaluate[site]["loss"] == pytest.approx(metrics["loss"], abs=1e-4)


def test_the_history_is_on_disk_after_every_round(tmp_path: Path) -> None:
    # The console follows a live run through history.json: after round r it holds rounds
    # 1..r, already complete, and no temporary file is left beside it.
    config = _config(tmp_path)
    output = Path(config.output_dir)
    seen: list[tuple[int, list[int], int]] = []

    def read_back(server_round: int) -> None:
        history = FederationHistory.read(output / "history.json")
        seen.append((server_round, sorted(history.rounds), len(history.rounds[server_round].train)))

    run_federation(InProcessGrid(config, 4), config, read_back)
    assert seen == [(1, [1], 4), (2, [1, 2], 4)]
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == []


def test_a_failing_site_is_recorded_and_the_round_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, **{"num-server-rounds": 1})
    grid = InProcessGrid(config, 4)
    real = grid.app

    def app(message: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 2 and message.metadata.message_type == "train":
            return Message(content=RecordDict(), reply_to=message)  # no weights, no metrics
        return real(message, context)

    grid.app = app  # type: ignore[assignment]
    run_federation(grid, config, run_id="3")
    history = FederationHistory.read(Path(config.output_dir) / "history.json")
    record = history.rounds[1]
    assert sorted(record.train) == [0, 1, 3]
    assert len(record.evaluate) == 4
    assert record.failures == ["train: node 1002: reply without metrics"]


def _refuse_training_except(keep: set[int], grid: InProcessGrid) -> None:
    """Every institution but ``keep`` refuses to train (an error reply)."""
    from flwr.app import Error

    real = grid.app

    def app(message: Message, context: Context) -> Message:
        partition = int(str(context.node_config["partition-id"]))
        if message.metadata.message_type == "train" and partition not in keep:
            return Message(error=Error(code=4030, reason="refused for the test"), reply_to=message)
        return real(message, context)

    grid.app = app  # type: ignore[assignment]


def _spy_on_decryption(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The contributor count of every aggregate a ClientApp decrypts."""
    from countyfl.federation import client_app

    decrypted: list[int] = []
    real = client_app.decrypt_average

    def spy(update: Any, *args: Any) -> Any:
        decrypted.append(update.contributors)
        return real(update, *args)

    monkeypatch.setattr(client_app, "decrypt_average", spy)
    return decrypted


@pytest.mark.parametrize("training", [{0}, {0, 1}], ids=["one-contributor", "two-contributors"])
def test_a_round_with_fewer_contributors_than_the_minimum_decrypts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training: set[int]
) -> None:
    config = _config(tmp_path, **_ckks(tmp_path), **{"min-contributors": 2, "dp": False})
    grid = InProcessGrid(config, 4)
    _refuse_training_except(training, grid)
    decrypted = _spy_on_decryption(monkeypatch)
    run_federation(grid, config, run_id="3")

    history = FederationHistory.read(Path(config.output_dir) / "history.json")
    output = Path(config.output_dir)
    discarded = [
        failure
        for record in history.rounds.values()
        for failure in record.failures
        if "discarded, never decrypted" in failure
    ]
    if len(training) < 2:
        assert decrypted == []
        assert len(discarded) == 2 and "aggregate of 1 institution(s)" in discarded[0]
        assert "minimum is 2 contributors" in discarded[0]
        # No aggregate was ever used: the run ends on its initial, plaintext model.
        assert not (output / FINAL_AGGREGATE_FILE).is_file()
        with np.load(output / FINAL_MODEL_FILE) as model:
            assert sorted(model.files) == ["linear.bias", "linear.weight"]
    else:  # the control: at the minimum, aggregates are used and decrypted
        assert decrypted and set(decrypted) == {2}
        assert discarded == []
        assert (output / FINAL_AGGREGATE_FILE).is_file()


def test_a_site_refuses_to_decrypt_an_aggregate_below_the_minimum(tmp_path: Path) -> None:
    from countyfl import models
    from countyfl.errors import ConfigError
    from countyfl.federation.client_app import receive_model
    from countyfl.privacy.he.codec import encrypt_update
    from countyfl.privacy.he.keys import load_secret_context
    from countyfl.privacy.he.wire import update_to_arrays

    config = _config(tmp_path, **_ckks(tmp_path), **{"min-contributors": 3})
    model = models.build(config.model, 13)
    weights = [t.detach().numpy() for t in model.state_dict().values()]
    single = encrypt_update(weights, 40, load_secret_context(Path(config.he_secret_context)))
    content = RecordDict({"arrays": update_to_arrays(single)})
    with pytest.raises(ConfigError, match="refusing to decrypt an aggregate of 1 institution"):
        receive_model(model, content, config)


def test_a_village_that_drops_out_mid_run_is_recorded_and_the_run_completes(
    tmp_path: Path,
) -> None:
    county = scenarios.load("county-16")
    village = next(i for i, inst in enumerate(county.institutions) if inst.level == "village")
    config = _config(
        tmp_path,
        **_ckks(tmp_path),
        scenario="county-16",
        model="risk-logreg",
        dp=False,
        **{"num-server-rounds": 3, "local-steps": 1, "fraction-train": 0.5},
    )
    grid = InProcessGrid(config, 16)
    real_send = grid.send_and_receive
    dropped = 1000 + village

    def send_and_receive(messages: Iterable[Message], *, timeout: float | None = None) -> Any:
        messages = list(messages)
        if grid.delivered.count("evaluate") >= 16:  # after round 1 the village is gone
            messages = [m for m in messages if m.metadata.dst_node_id != dropped]
        return real_send(messages, timeout=timeout)

    grid.send_and_receive = send_and_receive  # type: ignore[method-assign]
    run_federation(grid, config, run_id="3")

    history = FederationHistory.read(Path(config.output_dir) / "history.json")
    assert sorted(history.rounds) == [1, 2, 3]
    assert (Path(config.output_dir) / FINAL_AGGREGATE_FILE).is_file()
    for number, record in history.rounds.items():
        assert len(record.train) >= 2  # partial participation: half the county trains
        lost = [f for f in record.failures if f"node {dropped}: no reply" in f]
        if number == 1:
            assert village in record.evaluate and lost == []
            assert len(record.train) == 8  # half of the 16 institutions asked
        else:
            assert village not in record.evaluate and lost
    assert history.institution_names()[village].startswith("village-")


@pytest.mark.parametrize(
    ("overrides", "train", "evaluate"),
    [
        ({}, 16, 16),
        ({"fraction-train": 0.5, "fraction-evaluate": 0.25}, 8, 4),
        ({"fraction-train": 0.05, "min-contributors": 3}, 3, 16),
    ],
)
def test_the_minimum_asked_follows_the_fractions_of_the_expected_institutions(
    tmp_path: Path, overrides: dict[str, Any], train: int, evaluate: int
) -> None:
    # Under the simulation engine no node may be connected when a round starts; Flower
    # then asks only min_*_nodes, so they must hold the expected share.
    strategy = build_strategy(_config(tmp_path, **overrides), 16, 14).strategy
    assert isinstance(strategy, FedAvg)
    assert (strategy.min_train_nodes, strategy.min_evaluate_nodes) == (train, evaluate)
    assert strategy.min_available_nodes == 16


def test_a_village_that_joins_mid_run_is_asked_from_the_next_round(tmp_path: Path) -> None:
    county = scenarios.load("county-16")
    village = max(i for i, inst in enumerate(county.institutions) if inst.level == "village")
    config = _config(
        tmp_path,
        **_ckks(tmp_path),
        scenario="county-16",
        model="risk-logreg",
        dp=False,
        # A deployment lowers min-nodes so that a round starts without every node.
        **{"num-server-rounds": 2, "local-steps": 1, "min-nodes": 15},
    )
    grid = InProcessGrid(config, 16)
    joiner = 1000 + village
    every_node = grid.get_node_ids

    def connected() -> Iterable[int]:
        # The village's node connects once round 1 has been evaluated.
        joined = grid.delivered.count("evaluate") >= 15
        return [n for n in every_node() if joined or n != joiner]

    grid.get_node_ids = connected  # type: ignore[method-assign]
    run_federation(grid, config, run_id="3")

    history = FederationHistory.read(Path(config.output_dir) / "history.json")
    first, second = history.rounds[1], history.rounds[2]
    assert village not in first.train and village not in first.evaluate
    assert len(first.train) == 15 and first.failures == []
    assert village in second.train and village in second.evaluate and len(second.train) == 16


class OneNodeFailsGrid(InProcessGrid):
    """Node ``failing`` answers every training task with an error, as a broken site would."""

    failing = 1001

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        replies = list(super().send_and_receive(sent, timeout=timeout))
        for index, message in enumerate(sent):
            if message.metadata.dst_node_id == self.failing and "train" in str(
                message.metadata.message_type
            ):
                replies[index] = Message(
                    Error(code=5030, reason="the site's export is unreadable"),
                    reply_to=_as_delivered(message),
                )
        return replies


def _as_delivered(message: Message) -> Message:
    return Message(
        content=message.content,
        metadata=Metadata(
            run_id=3,
            message_id=uuid.uuid4().hex,
            src_node_id=0,
            dst_node_id=message.metadata.dst_node_id,
            reply_to_message_id="",
            group_id=message.metadata.group_id,
            created_at=time.time(),
            ttl=DEFAULT_TTL,
            message_type=message.metadata.message_type,
        ),
    )


def test_the_run_reports_nodes_rounds_and_replies_as_they_happen(tmp_path: Path) -> None:
    config = _config(tmp_path, dp=False)
    run_federation(OneNodeFailsGrid(config, 4), config, run_id="3")

    events = EventReader(Path(config.output_dir) / EVENTS_FILE).read_new()
    assert {e.run_id for e in events} == {"3"}
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.NODES and (events[0].connected, events[0].needed) == (4, 4)
    assert kinds[-1] is EventKind.FINISHED
    for server_round in (1, 2):
        of_round = [e for e in events if e.round == server_round]
        starts = [(e.phase, e.asked) for e in of_round if e.kind is EventKind.ROUND_START]
        assert starts == [("train", 4), ("evaluate", 4)]
        # Each phase: the replies as they arrived, then what became of each.
        train = [e for e in of_round if e.phase == "train"]
        assert [e.kind for e in train] == [
            EventKind.ROUND_START,
            *[EventKind.REPLY] * 4,
            *[EventKind.RESULT] * 4,
        ]
        results = {e.node: e for e in train if e.kind is EventKind.RESULT}
        failed = results.pop(1001)
        assert failed.accepted is False and failed.institution is None
        assert failed.reason == "the site's export is unreadable"
        assert all(r.accepted for r in results.values())
        assert sorted(r.institution or "" for r in results.values()) == [
            "cleveland",  # node 1001 is Hungary's
            "switzerland",
            "va-long-beach",
        ]
        [end] = [e for e in of_round if e.kind is EventKind.ROUND_END]
        assert (end.trained, end.evaluated, end.rounds) == (3, 4, 2)
        assert any("unreadable" in failure for failure in end.failures)
        assert set(end.metrics) >= {"loss", "accuracy"}


def test_a_run_that_lacks_nodes_stops_with_a_message_instead_of_waiting(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, dp=False, **{"min-nodes": 3, "node-wait-seconds": 1})
    grid = InProcessGrid(config, 2)  # two of the three nodes it waits for ever connect

    with pytest.raises(NodesMissingError) as raised:
        run_federation(grid, config, run_id="5")

    message = str(raised.value)
    assert "2 connected, 3 needed (min-nodes)" in message
    assert "countyfl node start" in message and "--min-nodes" in message
    events = EventReader(Path(config.output_dir) / EVENTS_FILE).read_new()
    assert [(e.kind, e.connected, e.needed) for e in events[:1]] == [(EventKind.NODES, 2, 3)]
    assert events[-1].kind is EventKind.FAILED and events[-1].reason == message
    assert grid.delivered == []  # no round started


class PushPullGrid(InProcessGrid):
    """InProcessGrid answering through push and pull, as a SuperLink does; logs each call."""

    def __init__(self, config: RunConfig, num_nodes: int) -> None:
        super().__init__(config, num_nodes)
        self.events: list[str] = []
        self._replies: dict[str, Message] = {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            (reply,) = super().send_and_receive([message])
            ids.append(reply.metadata.reply_to_message_id)
            self._replies[ids[-1]] = reply
            server_round = message.content.config_records["config"]["server-round"]
            self.events.append(f"push {message.metadata.message_type} {server_round}")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.events.append("pull")
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


def test_a_rounds_evaluation_goes_out_with_the_next_rounds_training(tmp_path: Path) -> None:
    # The ServerApp's own grid (PromptGrid) sends evaluate r and train r + 1 together, to
    # each node as one message (countyfl.federation.fused); the run is Flower's loop's.
    plain = {"dp": False, "num-server-rounds": 3}
    pipelined = _config(tmp_path / "pipelined", **plain)
    grid = PushPullGrid(pipelined, 4)
    ended: list[int] = []
    run_federation(PromptGrid(grid), pipelined, ended.append, run_id="3")
    sequential = _config(tmp_path / "sequential", **plain)
    run_federation(InProcessGrid(sequential, 4), sequential, run_id="3")

    assert ended == [1, 2, 3]
    pushes = grid.events
    # One message per node and round: evaluate r travels inside train r + 1's message,
    # only the first training and the last evaluation go alone.
    assert sorted(set(pushes) - {"pull"}) == [
        "push evaluate 3",
        "push train 1",
        "push train.fused 2",
        "push train.fused 3",
    ]
    for push in set(pushes) - {"pull"}:
        assert pushes.count(push) == 4
    got = FederationHistory.read(Path(pipelined.output_dir) / "history.json")
    expected = FederationHistory.read(Path(sequential.output_dir) / "history.json")
    assert sorted(got.rounds) == sorted(expected.rounds) == [1, 2, 3]
    for number, record in got.rounds.items():
        assert record.failures == []
        # Replies arrive in another order, so sums differ in their last bits only.
        for phase in ("train", "evaluate"):
            ours, flowers = getattr(record, phase), getattr(expected.rounds[number], phase)
            assert sorted(ours) == sorted(flowers)
            for partition, values in ours.items():
                assert values == pytest.approx(flowers[partition], rel=1e-6)
    with (
        np.load(Path(pipelined.output_dir) / FINAL_MODEL_FILE) as a,
        np.load(Path(sequential.output_dir) / FINAL_MODEL_FILE) as b,
    ):
        assert all(np.allclose(a[name], b[name], rtol=1e-6) for name in a.files)


def test_a_distributed_noise_run_sums_every_sites_share_under_ckks(tmp_path: Path) -> None:
    """Distributed noise end to end (docs/privacy.md, "Distributed noise"): every site
    calibrates the same sigma at the run's rate, draws its share, and weights its update by
    its expected batch; every aggregate the sites decrypt holds all four of them."""
    from countyfl import protocol
    from countyfl.privacy.ledger import LEDGER_FILE, PrivacyLedger
    from countyfl.privacy.weighting import expected_batch

    config = _config(
        tmp_path,
        **_ckks(tmp_path),
        **{
            "dp-noise": "distributed",
            "dp-sample-rate": 0.2,
            "local-steps": 1,
            "momentum": 0.0,
            "aggregation-weight": "batch",
            "min-contributors": 4,
            "calibration": "intercept",
        },
    )
    run_federation(InProcessGrid(config, 4), config, lambda _: None, run_id="3")
    history = FederationHistory.read(Path(config.output_dir) / "history.json")
    sigmas = set()
    for record in history.rounds.values():
        assert record.failures == [] and len(record.train) == 4
        for metrics in record.train.values():
            assert metrics[protocol.SAMPLE_RATE] == 0.2
            assert metrics[protocol.AGGREGATION_WEIGHT] == expected_batch(
                int(metrics[protocol.NUM_EXAMPLES]), 0.2
            )
            sigmas.add(metrics[protocol.NOISE_MULTIPLIER])
    assert len(sigmas) == 1  # the same sigma at every site and round: the shares add up
    for name in history.institution_names().values():
        ledger = PrivacyLedger(Path(config.sites_dir) / name / LEDGER_FILE)
        assert ledger.spent_epsilon(config.delta, config.accountant) == pytest.approx(
            config.target_epsilon, abs=0.01
        )
    # The calibration sums went encrypted: the county kept only their sum, which the key
    # holder who publishes decrypts; it is the sum of what each site's ledger released.
    from countyfl.privacy.calibration import CalibrationSums, intercept_shift
    from countyfl.privacy.modes import Mechanism
    from countyfl.runs import CALIBRATION_AGGREGATE_FILE, CalibrationRecord

    output = Path(config.output_dir)
    record = CalibrationRecord.read(output)
    assert record is not None and record.encrypted and not record.skipped
    assert record.contributors == 4 and record.shift == 0.0 and record.positives == 0.0
    assert (output / CALIBRATION_AGGREGATE_FILE).stat().st_mode & 0o777 == 0o600
    for metrics in history.rounds[2].evaluate.values():
        assert protocol.CALIBRATION_POSITIVES not in metrics  # never in plaintext
    released = [
        PrivacyLedger(Path(config.sites_dir) / name / LEDGER_FILE).released(
            "3", Mechanism.CALIBRATION
        )
        for name in history.institution_names().values()
    ]
    assert all(r is not None for r in released)
    # Shares are sent unrounded; the key holder rounds their decrypted sum to whole records.
    expected = intercept_shift(
        [
            CalibrationSums(
                round(sum(r["positives"] for r in released if r)),
                round(sum(r["risk"] for r in released if r)),
                round(sum(r["spread"] for r in released if r)),
                record.rows,
            )
        ],
        1,
    )
    metadata = publish(output, secret_context_path=Path(config.he_secret_context))
    published = metadata["calibration"]
    assert published.encrypted and published.contributors == 4
    assert published.positives == expected.positives and published.risk == expected.risk
    assert published.shift == pytest.approx(expected.shift, abs=1e-4)
    with np.load(output / "published" / "model.npz") as model:
        assert all(np.isfinite(model[name]).all() for name in model.files)
    # Without the key, nothing is published: the sums stay encrypted.
    with pytest.raises(PublishError, match="secret context"):
        publish(output, output / "keyless")
    # A record claiming fewer contributors than the task's minimum is not decrypted.
    record.model_copy(update={"contributors": 3}).write(output)
    with pytest.raises(PublishError, match="fewer than the task's min-contributors 4"):
        publish(output, output / "few", secret_context_path=Path(config.he_secret_context))


def test_encrypted_calibration_leaves_out_bad_replies_and_decrypts_nothing_below_the_minimum(
    tmp_path: Path,
) -> None:
    """A node's malformed encrypted sums or row count are left out and recorded, never a
    crash; with fewer valid sites than min-contributors nothing is added or decrypted."""
    from flwr.app import Array, ArrayRecord

    from countyfl import protocol
    from countyfl.federation.server_app import calibrate_encrypted
    from countyfl.federation.strategies.recording import _calibration_ciphertext
    from countyfl.privacy.calibration import CalibrationSums, encrypt_sums
    from countyfl.privacy.he.keys import load_secret_context
    from countyfl.runs import CALIBRATION_AGGREGATE_FILE

    keys = _ckks(tmp_path)
    config = _config(
        tmp_path,
        **keys,
        **{
            "dp-noise": "distributed",
            "dp-sample-rate": 0.2,
            "local-steps": 1,
            "aggregation-weight": "batch",
            "min-contributors": 3,
            "calibration": "intercept",
        },
    )
    strategy = build_strategy(config, 4, 14)
    secret = load_secret_context(Path(keys["he-secret-context"]))
    good = [encrypt_sums(secret, CalibrationSums(10.0, 8.0, 20.0, 100.0)).tobytes()] * 3
    record = strategy.history.round(2)
    strategy.history.round(1)
    for partition, rows in enumerate((100.0, 100.0, float("nan"), 100.0)):
        record.evaluate[partition] = {protocol.CALIBRATION_ROWS: rows}
        record.institutions[partition] = f"site-{partition}"
    # A ciphertext that is not one, and a row count that is not a number
    strategy.calibration_ciphertexts = {0: good[0], 1: good[1], 2: good[2], 3: b"not ckks"}
    output = tmp_path / "out"
    output.mkdir()
    # Sums sent in an earlier round are not of the final model: none is used
    strategy.calibration_round = 1
    stale = calibrate_encrypted(strategy, config, output)
    assert stale.contributors == 0 and "minimum is 3" in stale.skipped
    strategy.calibration_round = 2
    skipped = calibrate_encrypted(strategy, config, output)
    assert skipped.contributors == 2 and "minimum is 3" in skipped.skipped
    assert not (output / CALIBRATION_AGGREGATE_FILE).exists()
    assert any("site-2: encrypted sums without a valid row count" in f for f in record.failures)
    assert any(f.startswith("calibration: site-3:") for f in record.failures)
    # Three valid sites: summed, kept for the key holder, never read by the county
    record.evaluate[2] = {protocol.CALIBRATION_ROWS: 100.0}
    done = calibrate_encrypted(strategy, config, output)
    assert done.contributors == 3 and done.rows == 300.0 and not done.skipped
    assert (output / CALIBRATION_AGGREGATE_FILE).is_file()
    # A reply whose array is not the bytes it claims is left out by the strategy, no crash
    garbage = Array(dtype="uint8", shape=(5,), stype="numpy.ndarray", data=b"\x00\x01")
    assert _calibration_ciphertext(ArrayRecord({protocol.CIPHERTEXT: garbage})) is None
