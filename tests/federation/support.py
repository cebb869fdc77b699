"""Running the ServerApp in this process against the real ClientApp (no Flower process)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import DEFAULT_TTL, Context, Message, Metadata, RecordDict
from flwr.serverapp import Grid

from countyfl import scenarios
from countyfl.federation.client_app import make_client_app
from countyfl.run_config import RunConfig, parse_run_config


def heart_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    """A small Fed-Heart-Disease run (2 rounds of 2 steps, RDP) writing under ``tmp_path``."""
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


DISTRIBUTED_NOISE: dict[str, Any] = {
    "encryption": "ckks",
    "he-public-context": "p.ckks",
    "dp-noise": "distributed",
    "dp-sample-rate": 0.1,
    "local-steps": 1,
    "aggregation-weight": "batch",
    "min-contributors": 4,
}
"""A run config with distributed noise that parses (docs/privacy.md, "Distributed noise")."""


def act_as_server_task(monkeypatch: pytest.MonkeyPatch) -> None:
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
