"""A deployment message's records as one Flower object (countyfl.federation.bundle).

Oracles: unbundling gives back exactly the RecordDict that was bundled (the same Flower
object id); the real ClientApp answers a bundled message with the bundled form of the reply
it gives the plain one; a run whose messages travel bundled has the history and model of
one whose messages do not. Bundled contents from anyone else are checked, not trusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from countyfl import protocol
from countyfl.federation import bundle
from countyfl.federation.grid import PromptGrid
from countyfl.federation.server_app import FINAL_MODEL_FILE, run_federation
from countyfl.runs import FederationHistory
from tests.federation.support import PushPullGrid, act_as_server_task, heart_config
from tests.federation.test_fused import NODE, _arrays, _delivered, _instruction, _records


@pytest.fixture(autouse=True)
def _server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    act_as_server_task(monkeypatch)


def _content() -> RecordDict:
    weights = Array(np.arange(12, dtype=np.float32).reshape(3, 4))
    return RecordDict(
        {
            "arrays": ArrayRecord({"w": weights, "b": Array(np.zeros(3)), "same": weights}),
            "config": ConfigRecord({"server-round": 2, "blob": b"\x00" * 300, "names": ["a"]}),
            "metrics": MetricRecord({"loss": 0.25, "num-examples": 30}),
        }
    )


def _objects(content: RecordDict) -> list[bytes]:
    bundled = bundle.bundle(content)
    assert bundled is not None
    objects = bundled[bundle.BUNDLE]["objects"]
    assert isinstance(objects, list)
    return list(objects)


def _with(objects: list[Any], **extra: Any) -> RecordDict:
    return RecordDict({bundle.BUNDLE: ConfigRecord({"format": 1, "objects": objects, **extra})})


def test_unbundling_gives_back_exactly_what_was_bundled_as_one_record() -> None:
    content = _content()
    bundled = bundle.bundle(content)
    assert bundled is not None and bundle.is_bundled(bundled)
    # The records travel as the RecordDict and one record, instead of 8 objects.
    assert len(get_all_nested_objects(content)) == 8
    assert len(get_all_nested_objects(bundled)) == 2
    got = bundle.unbundle(bundled)
    assert got.object_id == content.object_id
    assert sorted(got) == ["arrays", "config", "metrics"]
    np.testing.assert_array_equal(
        got["arrays"]["w"].numpy(), np.arange(12, dtype=np.float32).reshape(3, 4)
    )
    assert dict(got["config"]) == dict(content["config"])
    assert not bundle.is_bundled(content)


def test_contents_beyond_the_limit_are_not_bundled() -> None:
    content = _content()
    size = sum(len(o.deflate()) for o in get_all_nested_objects(content).values())
    assert bundle.bundle(content, limit=size) is not None
    assert bundle.bundle(content, limit=size - 1) is None


def _tampered() -> list[bytes]:
    objects = _objects(_content())
    objects[0] = objects[0][:-1] + bytes([objects[0][-1] ^ 1])  # its id no longer matches
    return objects


def _message_object() -> bytes:
    metadata = Metadata(
        run_id=3,
        message_id="m",
        src_node_id=0,
        dst_node_id=NODE,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    return make_message(metadata, content=RecordDict()).deflate()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (RecordDict({bundle.BUNDLE: ConfigRecord({"format": 1})}), "a format and objects"),
        (RecordDict({bundle.BUNDLE: MetricRecord({"format": 1})}), "a format and objects"),
        (_with([], other=1), "a format and objects"),
        (RecordDict({bundle.BUNDLE: ConfigRecord({"format": 2, "objects": [b"x"]})}), "format 2"),
        (_with([]), "1 to 4096 objects"),
        (_with([b"x"] * 4097), "1 to 4096 objects"),
        (_with(["text"]), "must be bytes"),
        (_with([b"no head at all"]), "malformed"),
        (_with(_tampered()), "before one of its children"),
        (_with(_objects(_content())[1:]), "before one of its children"),
        (_with([_message_object()]), "'Message' is not a record"),
        (_with(_objects(_content())[:1] * 2), "appears twice"),
        (_with(_objects(_content())[:-1]), "end with its RecordDict"),
        (_with(_objects(RecordDict()) + _objects(_content())), "outside its tree"),
        (_with([b"x" * (bundle.MAX_BUNDLE_BYTES + 1)]), "exceed"),
    ],
)
def test_bundled_contents_that_are_not_a_well_formed_record_dict_are_refused(
    content: RecordDict, why: str
) -> None:
    with pytest.raises(bundle.BundleError, match=why):
        bundle.unbundle(content)


def _answer(message: Message, context: Context) -> Message:
    """A handler that says what it received, as a site's would."""
    seen = ConfigRecord({"records": sorted(message.content)})
    return Message(content=RecordDict({"seen": seen}), reply_to=message)


def _received(content: RecordDict) -> Message:
    return _delivered(
        Message(content=content, dst_node_id=NODE, message_type="train", group_id="1")
    )


def test_the_mod_unbundles_for_the_app_and_bundles_its_reply() -> None:
    context = Context(run_id=3, node_id=NODE, node_config={}, state=RecordDict(), run_config={})
    bundled = bundle.bundle(_content())
    assert bundled is not None
    reply = bundle.bundle_mod(_received(bundled), context, _answer)
    assert bundle.is_bundled(reply.content)
    assert bundle.unbundle(reply.content)["seen"]["records"] == ["arrays", "config", "metrics"]
    # A plain message gets a plain reply.
    plain = bundle.bundle_mod(_received(_content()), context, _answer)
    assert plain.content["seen"]["records"] == ["arrays", "config", "metrics"]
    # A bundled message that does not unbundle never reaches the app.
    reached: list[Message] = []
    refused = bundle.bundle_mod(
        _received(_with(_tampered())), context, lambda m, c: reached.append(m) or _answer(m, c)
    )
    assert reached == [] and refused.has_error()
    assert refused.error.code == protocol.SITE_FAILURE_ERROR_CODE
    assert "could not read the county's message" in str(refused.error.reason)
    # An error reply stays an error.
    no = Error(code=protocol.REFUSED_ERROR_CODE, reason="no")
    refusing = lambda m, c: Message(error=no, reply_to=m)  # noqa: E731
    failing = bundle.bundle_mod(_received(bundled), context, refusing)
    assert failing.has_error() and failing.error.code == protocol.REFUSED_ERROR_CODE


def test_the_client_app_answers_a_bundled_message_as_the_plain_one(tmp_path: Path) -> None:
    from tests.federation.support import InProcessGrid

    config = heart_config(tmp_path, dp=False)
    arrays = _arrays(config)
    train = _instruction("train", arrays, 1)
    bundled = bundle.bundle(train.content)
    assert bundled is not None
    grid = InProcessGrid(config, 1)
    reply = grid.app(_delivered(_instruction("train", arrays, 1)), grid.contexts[NODE])
    on_wire = InProcessGrid(config, 1)
    bundled_message = make_message(
        _delivered(train).metadata, content=bundled
    )  # what the node's task pulls
    bundled_reply = on_wire.app(bundled_message, on_wire.contexts[NODE])
    assert bundle.is_bundled(bundled_reply.content)
    assert len(get_all_nested_objects(bundled_reply)) == 3
    # The release guard saw the reply unbundled and let it go: the records are the same.
    unbundled = make_message(bundled_reply.metadata, content=bundle.unbundle(bundled_reply.content))
    assert _records(unbundled) == _records(reply)


def test_a_run_whose_messages_travel_bundled_is_the_run_whose_do_not(tmp_path: Path) -> None:
    plain = {"dp": False, "num-server-rounds": 2}
    bundled_config = heart_config(tmp_path / "bundled", **plain)
    wire = PushPullGrid(bundled_config, 4)
    run_federation(PromptGrid(wire, bundle=True), bundled_config, run_id="3")
    plain_config = heart_config(tmp_path / "plain", **plain)
    reference = PushPullGrid(plain_config, 4)
    run_federation(PromptGrid(reference), plain_config, run_id="3")

    # Every message and every reply traveled as 3 objects: message, RecordDict, record.
    assert {count for _, count in wire.wire} == {3}
    assert all(count > 3 for kind, count in reference.wire if kind.endswith("train"))
    assert sorted(e for e in wire.events if e != "pull") == sorted(
        e for e in reference.events if e != "pull"
    )
    got = FederationHistory.read(Path(bundled_config.output_dir) / "history.json")
    expected = FederationHistory.read(Path(plain_config.output_dir) / "history.json")
    assert sorted(got.rounds) == sorted(expected.rounds) == [1, 2]
    for number, record in got.rounds.items():
        assert record.failures == []
        for phase in ("train", "evaluate"):
            ours, theirs = getattr(record, phase), getattr(expected.rounds[number], phase)
            assert sorted(ours) == sorted(theirs)
            for partition, values in ours.items():
                assert values == pytest.approx(theirs[partition], rel=1e-6)
    with (
        np.load(Path(bundled_config.output_dir) / FINAL_MODEL_FILE) as a,
        np.load(Path(plain_config.output_dir) / FINAL_MODEL_FILE) as b,
    ):
        assert all(np.allclose(a[name], b[name], rtol=1e-6) for name in a.files)


class GarblingGrid(PushPullGrid):
    """A node whose reply, bundled, does not unbundle (one object's bytes changed)."""

    def pull_messages(self, message_ids: Any) -> list[Message]:
        replies = list(super().pull_messages(message_ids))
        for n, reply in enumerate(replies):
            if reply.metadata.src_node_id == NODE and not reply.has_error():
                replies[n] = make_message(reply.metadata, content=_with(_tampered()))
        return replies


def test_a_bundled_reply_that_does_not_unbundle_is_that_nodes_error(tmp_path: Path) -> None:
    config = heart_config(tmp_path, dp=False)
    grid = PromptGrid(GarblingGrid(config, 2), bundle=True)
    arrays = _arrays(config)
    replies = grid.send_and_receive(
        [_instruction("train", arrays, 1, node) for node in (NODE, NODE + 1)], timeout=60
    )
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert by_node[NODE].has_error()
    assert by_node[NODE].error.code == protocol.SITE_FAILURE_ERROR_CODE
    assert "malformed reply" in str(by_node[NODE].error.reason)
    assert not by_node[NODE + 1].has_error()
    assert sorted(by_node[NODE + 1].content) == ["arrays", "metrics", "site"]


def test_a_reply_too_large_to_bundle_travels_as_flower_sends_it() -> None:
    context = Context(run_id=3, node_id=NODE, node_config={}, state=RecordDict(), run_config={})
    bundled = bundle.bundle(_content())
    assert bundled is not None

    def large(message: Message, context: Context) -> Message:
        big = ArrayRecord({"w": Array(np.zeros(2**20, dtype=np.float64))})  # 8 MiB
        return Message(content=RecordDict({"arrays": big}), reply_to=message)

    reply = bundle.bundle_mod(_received(bundled), context, large)
    assert not bundle.is_bundled(reply.content)
    assert reply.content["arrays"]["w"].numpy().nbytes == 8 * 2**20
