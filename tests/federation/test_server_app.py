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
from flwr.app import DEFAULT_TTL, Context, Message, Metadata, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from countyfl import scenarios
from countyfl.federation.client_app import make_client_app
from countyfl.federation.server_app import build_strategy, run_federation
from countyfl.federation.strategies.encrypted import EncryptedFedAvg, EncryptedFedProx
from countyfl.federation.strategies.recording import RecordingStrategy
from countyfl.privacy.he.keys import PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE, init_keys
from countyfl.publishing import publish
from countyfl.run_config import RunConfig, parse_run_config
from countyfl.runs import FINAL_AGGREGATE_FILE, FINAL_MODEL_FILE, FederationHistory, RunRecord

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process knows of itself (Flower's strategies address messages with it)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 3)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class InProcessGrid(Grid):
    """Delivers every message to the ClientApp of its node, in this process."""

    def __init__(self, config: RunConfig, num_nodes: int) -> None:
        self.app = make_client_app(config)
        self.contexts = {
            1000 + partition: Context(
                run_id=3,
                node_id=1000 + partition,
                node_config={"partition-id": partition},
                state=RecordDict(),
                run_config=config.to_run_config(),
            )
            for partition in range(num_nodes)
        }
        self.delivered: list[str] = []

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            delivered = Message(
                content=message.content,
                metadata=Metadata(
                    run_id=3,
                    message_id=uuid.uuid4().hex,
                    src_node_id=0,
                    dst_node_id=node,
                    reply_to_message_id="",
                    group_id=message.metadata.group_id,
                    created_at=time.time(),
                    ttl=DEFAULT_TTL,
                    message_type=message.metadata.message_type,
                ),
            )
            self.delivered.append(message.metadata.message_type)
            replies.append(self.app(delivered, self.contexts[node]))
        return replies


def _config(tmp_path: Path, **overrides: Any) -> RunConfig:
    return parse_run_config(
        {
            **scenarios.get("fed-heart-disease").defaults,
            "num-server-rounds": 2,
            "local-steps": 2,
            "accountant": "rdp",
            "output-dir": str(tmp_path / "run"),
            "sites-dir": str(tmp_path / "sites"),
            **overrides,
        }
    )


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
        ({}, FedAvg),
        ({"strategy": "fedprox", "proximal-mu": 0.1}, FedProx),
    ],
    ids=["fedavg", "fedprox"],
)
def test_build_strategy_wraps_flowers_own_strategy(
    tmp_path: Path, overrides: dict[str, Any], inner: type
) -> None:
    strategy = build_strategy(_config(tmp_path, **overrides), 4, 14)
    assert isinstance(strategy, RecordingStrategy)
    assert type(strategy.strategy) is inner


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
