"""A round's evaluation and the next round's training as one message per node.

Oracle: what a node answers to the fused message, split back at the county, equals what
it answers to the two messages sent apart; the release guard checks every part of a fused
reply in its own phase; a reply that is not two well-formed parts is an error for both.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message

from countyfl import models, protocol
from countyfl.federation import fused
from countyfl.federation.records import model_to_arrays
from countyfl.federation.release_guard import _fields, fused_release_problems, release_guard
from countyfl.run_config import RunConfig
from tests.federation.support import InProcessGrid, act_as_server_task, heart_config

NODE = 1000  # partition 0 of InProcessGrid


@pytest.fixture(autouse=True)
def _server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    act_as_server_task(monkeypatch)  # instructions are made as a ServerApp makes them


def _instruction(phase: str, arrays: ArrayRecord, server_round: int, node: int = NODE) -> Message:
    return Message(
        content=RecordDict(
            {
                protocol.ARRAYS: arrays,
                protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: server_round}),
            }
        ),
        dst_node_id=node,
        message_type=phase,
        group_id=str(server_round),
    )


def _delivered(message: Message) -> Message:
    """The message as a node receives it (the SuperLink sets its id and source)."""
    md = message.metadata
    return make_message(
        Metadata(
            run_id=3,
            message_id=uuid.uuid4().hex,
            src_node_id=0,
            dst_node_id=md.dst_node_id,
            reply_to_message_id="",
            group_id=md.group_id,
            created_at=time.time(),
            ttl=md.ttl,
            message_type=md.message_type,
        ),
        content=message.content,
    )


def _arrays(config: RunConfig) -> ArrayRecord:
    torch_model = models.build(config.model, 13)
    return model_to_arrays(torch_model)


def _records(message: Message) -> dict[str, Any]:
    """Every value of a reply's records, arrays as lists (for comparing two replies)."""
    out: dict[str, Any] = {}
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {k: v.numpy().tolist() for k, v in record.items()}
        else:
            out[name] = dict(record)
    return out


def test_a_fused_message_is_answered_as_the_two_messages_apart(tmp_path: Path) -> None:
    config = heart_config(tmp_path, dp=False)
    arrays = _arrays(config)
    evaluate, train = _instruction("evaluate", arrays, 1), _instruction("train", arrays, 2)
    ((both, evaluate_part, train_part),), alone_evaluate, alone_train = fused.pair(
        [evaluate], [train]
    )
    assert alone_evaluate == alone_train == []
    assert (evaluate_part, train_part) == (evaluate, train)
    assert both.metadata.message_type == fused.FUSED
    assert both.metadata.dst_node_id == NODE

    grid = InProcessGrid(config, 1)
    node = grid.contexts[NODE]
    reply = grid.app(_delivered(both), node)
    assert not reply.has_error()
    assert sorted(reply.content) == [
        "evaluate.metrics",
        "evaluate.site",
        "train.arrays",
        "train.metrics",
        "train.site",
    ]
    # Every part passed the release guard, and the fused reply does as a whole.
    assert fused_release_problems(reply, _fields(config)) == []
    got_evaluate, got_train = fused.split(reply, evaluate, train)
    assert got_evaluate.metadata.message_type == "evaluate"
    assert got_train.metadata.message_type == "train"
    assert got_evaluate.metadata.group_id == "1" and got_train.metadata.group_id == "2"

    apart = InProcessGrid(config, 1)
    want_evaluate = apart.app(_delivered(evaluate), apart.contexts[NODE])
    want_train = apart.app(_delivered(train), apart.contexts[NODE])
    assert _records(got_evaluate) == _records(want_evaluate)
    assert _records(got_train) == _records(want_train)


def test_only_a_node_asked_both_with_one_model_gets_one_message(tmp_path: Path) -> None:
    config = heart_config(tmp_path, dp=False)
    arrays = _arrays(config)
    other = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    evaluate = [_instruction("evaluate", arrays, 1, node) for node in (1, 2, 3)]
    train = [
        _instruction("train", arrays, 2, 1),
        _instruction("train", other, 2, 2),  # another model: not fused
        _instruction("train", arrays, 2, 4),  # not asked to evaluate
    ]
    pairs, alone_evaluate, alone_train = fused.pair(evaluate, train)
    assert [p[0].metadata.dst_node_id for p in pairs] == [1]
    assert [m.metadata.dst_node_id for m in alone_evaluate] == [2, 3]
    assert sorted(m.metadata.dst_node_id for m in alone_train) == [2, 4]


def _reply(content: RecordDict | None = None, error: Error | None = None) -> Message:
    metadata = Metadata(
        run_id=3,
        message_id="r",
        src_node_id=NODE,
        dst_node_id=0,
        reply_to_message_id="f",
        group_id="2",
        created_at=time.time(),
        ttl=60.0,
        message_type=fused.FUSED,
    )
    return make_message(metadata, content=content, error=error)


def _metrics() -> MetricRecord:
    return MetricRecord({protocol.NUM_EXAMPLES: 10, protocol.LOSS: 0.5})


def test_a_refused_training_still_delivers_the_evaluation() -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    evaluate, train = _instruction("evaluate", arrays, 1), _instruction("train", arrays, 2)
    (both, _, _), *_ = fused.pair([evaluate], [train])[0]
    evaluated = Message(content=RecordDict({protocol.METRICS: _metrics()}), reply_to=both)
    refused = Message(
        error=Error(code=protocol.REFUSED_ERROR_CODE, reason="budget spent"), reply_to=both
    )
    combined = fused.combine(both, evaluated, refused)
    assert sorted(combined.content) == ["evaluate.metrics", "train.error"]
    got_evaluate, got_train = fused.split(_reply(combined.content), evaluate, train)
    assert dict(got_evaluate.content[protocol.METRICS]) == dict(_metrics())
    assert got_train.has_error()
    assert (got_train.error.code, got_train.error.reason) == (
        protocol.REFUSED_ERROR_CODE,
        "budget spent",
    )


@pytest.mark.parametrize(
    ("records", "evaluate_error", "train_error"),
    [
        # a record of neither phase: both parts are errors
        ({"metrics": _metrics()}, "neither phase", "neither phase"),
        # one part missing: that part is an error, the other is used
        ({"evaluate.metrics": _metrics()}, None, "lacks its train part"),
        # an error part that is not a code and a reason
        (
            {"evaluate.error": ConfigRecord({"code": "x"}), "train.metrics": _metrics()},
            "malformed",
            None,
        ),
    ],
)
def test_a_malformed_fused_reply_is_an_error_for_the_parts_it_spoils(
    records: dict[str, Any], evaluate_error: str | None, train_error: str | None
) -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    evaluate, train = _instruction("evaluate", arrays, 1), _instruction("train", arrays, 2)
    got = fused.split(_reply(RecordDict(records)), evaluate, train)
    for message, expected in zip(got, (evaluate_error, train_error), strict=True):
        if expected is None:
            assert not message.has_error()
        else:
            assert message.has_error() and expected in message.error.reason
            assert message.error.code == protocol.SITE_FAILURE_ERROR_CODE


def test_a_whole_fused_reply_that_is_an_error_is_that_error_for_both() -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    evaluate, train = _instruction("evaluate", arrays, 1), _instruction("train", arrays, 2)
    error = Error(code=protocol.REFUSED_ERROR_CODE, reason="task not approved")
    for part in fused.split(_reply(error=error), evaluate, train):
        assert part.has_error() and part.error.reason == "task not approved"


def test_the_guard_checks_each_part_of_a_fused_reply_in_its_own_phase(tmp_path: Path) -> None:
    config = heart_config(tmp_path, dp=False)
    fields = _fields(config)
    site = ConfigRecord({protocol.INSTITUTION_ID: "a"})
    good = RecordDict({"evaluate.metrics": _metrics(), "evaluate.site": site})
    assert fused_release_problems(_reply(good), fields) == []
    # A plaintext model is a train field, never an evaluate one.
    leaked = RecordDict(
        {"evaluate.arrays": ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})}
    )
    assert fused_release_problems(_reply(leaked), fields) == [
        "evaluate:arrays (arrays) is not in the release inventory"
    ]
    stray = RecordDict({"train.metrics": MetricRecord({"exact-rows": 12})})
    assert fused_release_problems(_reply(stray), fields) == [
        "train:metrics.exact-rows is not in the release inventory"
    ]
    bad_code = RecordDict({"train.error": ConfigRecord({"code": 1, "reason": "x"})})
    assert fused_release_problems(_reply(bad_code), fields) == [
        "error code 1 is not a refusal the inventory lists"
    ]
    unnamed = RecordDict({"metrics": _metrics()})
    assert fused_release_problems(_reply(unnamed), fields) == [
        "metrics is a record of neither phase of a fused reply"
    ]
    # The guard itself refuses such a reply: nothing of it leaves the site.
    guard = release_guard(config)
    refused = guard(_delivered_fused(), _context(config), lambda m, c: _reply(leaked))
    assert refused.has_error() and "evaluate:arrays" in refused.error.reason


def _delivered_fused() -> Message:
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    (both, _, _), *_ = fused.pair(
        [_instruction("evaluate", arrays, 1)], [_instruction("train", arrays, 2)]
    )[0]
    return _delivered(both)


def _context(config: RunConfig) -> Any:
    from flwr.app import Context

    return Context(
        run_id=3,
        node_id=NODE,
        node_config={},
        state=RecordDict(),
        run_config=config.to_run_config(),
    )


@pytest.mark.parametrize(
    "record",
    [
        ConfigRecord({"code": protocol.REFUSED_ERROR_CODE, "reason": "x", "leak": [1.5, 2.5]}),
        ConfigRecord({"code": protocol.REFUSED_ERROR_CODE, "reason": [0.25, 0.5]}),
        ConfigRecord({"code": protocol.REFUSED_ERROR_CODE}),
        ConfigRecord({"code": True, "reason": "x"}),
        ConfigRecord({"code": protocol.REFUSED_ERROR_CODE, "reason": "x" * 5000}),
        MetricRecord({"code": protocol.REFUSED_ERROR_CODE}),
    ],
)
def test_a_fused_error_part_holds_a_code_and_a_reason_and_nothing_else(
    tmp_path: Path, record: Any
) -> None:
    # An error reply of Flower's holds only a code and a reason: so must its fused form.
    fields = _fields(heart_config(tmp_path, dp=False))
    good = ConfigRecord({"code": protocol.REFUSED_ERROR_CODE, "reason": "budget spent"})
    assert fused_release_problems(_reply(RecordDict({"train.error": good})), fields) == []
    problems = fused_release_problems(_reply(RecordDict({"train.error": record})), fields)
    assert len(problems) == 1 and problems[0].startswith("train.error")
    beside = RecordDict({"train.error": good, "train.metrics": _metrics()})
    assert fused_release_problems(_reply(beside), fields) == [
        "train.error must be alone and hold only a code and a reason"
    ]


def test_a_node_asked_twice_in_one_phase_is_never_fused(tmp_path: Path) -> None:
    arrays = _arrays(heart_config(tmp_path, dp=False))
    evaluate = [_instruction("evaluate", arrays, 1, 1), _instruction("evaluate", arrays, 1, 1)]
    train = [_instruction("train", arrays, 2, 1), _instruction("train", arrays, 2, 1)]
    pairs, alone_evaluate, alone_train = fused.pair(evaluate, train)
    # One evaluate pairs with the first train; the others go alone, nothing is lost.
    assert len(pairs) + len(alone_evaluate) == 2 and len(pairs) + len(alone_train) == 2
    assert len(pairs) == 1


class DroppingGrid(InProcessGrid):
    """Answers through push and pull, as a SuperLink does, but stores no message to
    ``dropped`` (a node not in the run): Flower's grids leave such a message's id out."""

    def __init__(self, config: RunConfig, num_nodes: int, dropped: int) -> None:
        super().__init__(config, num_nodes)
        self.dropped = dropped
        self._replies: dict[str, Message] = {}

    def push_messages(self, messages: Any) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            if message.metadata.dst_node_id == self.dropped:
                continue
            (reply,) = super().send_and_receive([message])
            reply.metadata.__dict__["_reply_to_message_id"] = message.metadata.message_id
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Any) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


def test_the_grid_splits_fused_replies_and_a_message_it_could_not_push_gets_none(
    tmp_path: Path,
) -> None:
    from countyfl.federation.grid import PromptGrid

    config = heart_config(tmp_path, dp=False)
    arrays = _arrays(config)
    nodes = [NODE, NODE + 1, NODE + 2]
    grid = DroppingGrid(config, 3, dropped=NODE + 1)
    seen: list[Message] = []
    evaluate, train = PromptGrid(grid).send_and_receive_batches(
        [
            [_instruction("evaluate", arrays, 1, node) for node in nodes],
            [_instruction("train", arrays, 2, node) for node in nodes],
        ],
        timeout=5,
        on_reply=seen.append,
        fuse=True,
    )
    assert grid.delivered == [fused.FUSED, fused.FUSED]  # one message per node it reached
    assert sorted(m.metadata.src_node_id for m in evaluate) == [NODE, NODE + 2]
    assert sorted(m.metadata.src_node_id for m in train) == [NODE, NODE + 2]
    assert all(m.metadata.message_type == "evaluate" for m in evaluate)
    assert all(m.metadata.message_type == "train" and not m.has_error() for m in train)
    assert len(seen) == 4  # each part reported as it arrived
