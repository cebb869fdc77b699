"""A round's evaluation and the next round's training to one node, in one Flower message.

The ServerApp sends a round's evaluation together with the next round's training
(:mod:`countyfl.federation.rounds`): both carry the same global model and neither needs
the other's replies. In deployment every Flower message costs a node a task process, the
task's Runtime API hops and a dozen object requests through the SuperLink (profiled in
docs/deployment.md: on the 2-core county machine most of a round's CPU), so the two
messages to one node travel as one:

- the ServerApp's grid (:class:`~countyfl.federation.grid.PromptGrid`) pairs a node's
  evaluate and train instructions that carry the same model into one message of type
  ``train.fused`` (:func:`fuse`): the train instruction's records plus the evaluate
  instruction's config under :data:`EVALUATE_CONFIG`;
- the ClientApp's ``train.fused`` handler (:func:`handle_fused`) runs the two
  instructions as they would have arrived apart, each through the app's own mods (the
  release guard and the site's policy), evaluation first, and returns both replies as one:
  every record of a part under ``<phase>.<name>``, a part that is an error as
  ``<phase>.error`` with its code and reason (:func:`combine`);
- the grid splits the reply back into the two replies the strategy expects
  (:func:`split`). A reply that is not two well-formed parts is an error for both.

One thing does change: a node's evaluation of round r comes back with its training of
round r + 1, so a node that trains past the round's timeout, or whose task dies while
training, loses that evaluation too (both phases are recorded as unanswered). Nothing
else changes: the same records leave the site, each checked by the release guard
in its own phase (and again, prefixed, as the fused reply), the same strategy calls, the
same ledger entries. A node that is asked only to evaluate (the last round) or only to
train (a node sampled for one phase) gets the plain message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, Metadata, RecordDict
from flwr.app.message.message import make_message  # Flower's own: a message from metadata

from countyfl import protocol

FUSED = "train.fused"
"""The message type of a fused instruction (Flower routes it to ``@app.train("fused")``)."""
EVALUATE_CONFIG = "evaluate-config"
"""The evaluate instruction's ConfigRecord inside a fused instruction."""
PHASES = ("evaluate", "train")
ERROR = "error"
ERROR_CODE = "code"
ERROR_REASON = "reason"
MALFORMED_REPLY_CODE = protocol.SITE_FAILURE_ERROR_CODE
MAX_REASON = 2000
"""The longest reason of a part's error the county keeps (a site's reasons are a line)."""


def fuse(evaluate: Message, train: Message) -> Message | None:
    """One ``train.fused`` instruction for both, or None when they cannot travel as one
    (another node, another model, records other than the model and a config)."""
    em, tm = evaluate.metadata, train.metadata
    if em.dst_node_id != tm.dst_node_id or em.message_type != "evaluate":
        return None
    if tm.message_type != "train" or evaluate.has_error() or train.has_error():
        return None
    expected = {protocol.ARRAYS, protocol.CONFIG}
    if set(evaluate.content) != expected or set(train.content) != expected:
        return None
    config = evaluate.content[protocol.CONFIG]
    if not isinstance(config, ConfigRecord) or not isinstance(
        evaluate.content[protocol.ARRAYS], ArrayRecord
    ):
        return None
    model, other = evaluate.content[protocol.ARRAYS], train.content[protocol.ARRAYS]
    if model is not other and model.object_id != other.object_id:
        return None
    content = RecordDict(
        {
            protocol.ARRAYS: train.content[protocol.ARRAYS],
            protocol.CONFIG: train.content[protocol.CONFIG],
            EVALUATE_CONFIG: config,
        }
    )
    return Message(
        content=content,
        dst_node_id=tm.dst_node_id,
        message_type=FUSED,
        group_id=tm.group_id,
        ttl=min(em.ttl, tm.ttl),
    )


def pair(
    evaluate: Iterable[Message], train: Iterable[Message]
) -> tuple[list[tuple[Message, Message, Message]], list[Message], list[Message]]:
    """``(fused, evaluate, train)`` triples for every node asked both, and the messages
    left to send apart (evaluate, then train)."""
    by_node: dict[int, Message] = {}
    alone_train: list[Message] = []
    for message in train:
        node = message.metadata.dst_node_id
        if node in by_node:
            alone_train.append(message)  # a node asked twice: never fused
        else:
            by_node[node] = message
    fused: list[tuple[Message, Message, Message]] = []
    alone_evaluate: list[Message] = []
    for message in evaluate:
        partner = by_node.get(message.metadata.dst_node_id)
        both = fuse(message, partner) if partner is not None else None
        if both is None or partner is None:
            alone_evaluate.append(message)
            continue
        del by_node[message.metadata.dst_node_id]
        fused.append((both, message, partner))
    return fused, alone_evaluate, alone_train + list(by_node.values())


def _retyped(md: Metadata, message_type: str, group_id: str) -> Metadata:
    """``md`` as it would read for one phase: another message type and group."""
    return Metadata(
        run_id=md.run_id,
        message_id=md.message_id,
        src_node_id=md.src_node_id,
        dst_node_id=md.dst_node_id,
        reply_to_message_id=md.reply_to_message_id,
        group_id=group_id,
        created_at=md.created_at,
        ttl=md.ttl,
        message_type=message_type,
        src_task_id=md.src_task_id,
        dst_task_id=md.dst_task_id,
    )


def _part_metadata(reply: Message, instruction: Message) -> Metadata:
    """A split reply's metadata: the fused reply's, typed and grouped as its instruction."""
    md = instruction.metadata
    return _retyped(reply.metadata, md.message_type, md.group_id)


def split(reply: Message, evaluate: Message, train: Message) -> tuple[Message, Message]:
    """The evaluate reply and the train reply a fused reply holds.

    A fused reply that is an error (the site refused the whole message) is that error for
    both; one that is not two well-formed parts is an error for both that says why.
    """
    instructions = {"evaluate": evaluate, "train": train}
    if reply.has_error():
        whole = Error(code=reply.error.code, reason=str(reply.error.reason)[:MAX_REASON])
        return (
            make_message(_part_metadata(reply, evaluate), error=whole),
            make_message(_part_metadata(reply, train), error=whole),
        )
    parts: dict[str, dict[str, Any]] = {phase: {} for phase in PHASES}
    problem = ""
    for name, record in reply.content.items():
        phase, dot, key = name.partition(".")
        if not dot or phase not in parts or not key:
            problem = f"a fused reply holds a record {name[:80]!r} of neither phase"
            break
        parts[phase][key] = record
    results: list[Message] = []
    for phase in PHASES:
        metadata = _part_metadata(reply, instructions[phase])
        records = parts[phase]
        error = _error_of(records) if not problem else None
        reason = problem or ("" if records else f"a fused reply lacks its {phase} part")
        if error is not None:
            results.append(make_message(metadata, error=error))
        elif reason:
            results.append(
                make_message(metadata, error=Error(code=MALFORMED_REPLY_CODE, reason=reason))
            )
        else:
            results.append(make_message(metadata, content=RecordDict(records)))
    return results[0], results[1]


def _error_of(records: dict[str, Any]) -> Error | None:
    """The error a part reports (``<phase>.error``), None for a part with content."""
    if ERROR not in records:
        return None
    record = records[ERROR]
    code = record.get(ERROR_CODE) if isinstance(record, ConfigRecord) else None
    reason = record.get(ERROR_REASON) if isinstance(record, ConfigRecord) else None
    if len(records) != 1 or type(code) is not int or not isinstance(reason, str):
        return Error(code=MALFORMED_REPLY_CODE, reason="a fused reply's error part is malformed")
    return Error(code=code, reason=reason[:MAX_REASON])


def _instruction(fused: Message, phase: str, content: RecordDict) -> Message:
    md = fused.metadata
    return make_message(_retyped(md, phase, md.group_id), content=content)


def unfuse(fused: Message) -> tuple[Message, Message]:
    """The evaluate and train instructions a ``train.fused`` message carries, as the node
    would have received them apart. ValueError when it is not one."""
    content = fused.content
    if set(content) != {protocol.ARRAYS, protocol.CONFIG, EVALUATE_CONFIG}:
        raise ValueError(f"a fused instruction holds the records {sorted(content)}")
    arrays = content[protocol.ARRAYS]
    evaluate = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: content[EVALUATE_CONFIG]})
    train = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: content[protocol.CONFIG]})
    return _instruction(fused, "evaluate", evaluate), _instruction(fused, "train", train)


def combine(fused: Message, evaluate: Message, train: Message) -> Message:
    """One reply to ``fused`` holding both parts' replies, each record renamed by phase."""
    content = RecordDict()
    for phase, reply in zip(PHASES, (evaluate, train), strict=True):
        if reply.has_error():
            content[f"{phase}.{ERROR}"] = ConfigRecord(
                {
                    ERROR_CODE: int(reply.error.code),
                    ERROR_REASON: str(reply.error.reason)[:MAX_REASON],
                }
            )
            continue
        for name, record in reply.content.items():
            content[f"{phase}.{name}"] = record
    return Message(content=content, reply_to=fused)


def handle_fused(
    fused: Message, context: Context, dispatch: Callable[[Message, Context], Message]
) -> Message:
    """Answer a ``train.fused`` message: its evaluation, then its training, each sent
    through ``dispatch`` (the ClientApp, so each goes through the app's mods)."""
    evaluate, train = unfuse(fused)
    evaluated = dispatch(evaluate, context)
    trained = dispatch(train, context)
    return combine(fused, evaluated, trained)
