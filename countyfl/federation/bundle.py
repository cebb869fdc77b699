"""A deployment message's records as one Flower object: fewer requests per message.

Flower 1.42 moves a message as a tree of objects (the message, its RecordDict, each record,
each Array and each chunk of it), each pushed and pulled as its own request: eight to ten
for one of countyfl's instructions or replies, at the ServerApp, the SuperLink, the
node's SuperNode and the node's task, every round (profiled in docs/deployment.md). Most
of a deployment round's CPU on the county's machine went to those requests.

In deployment (never in simulation, where messages are not serialized) the records of a
message travel as one *bundle*, when they come to at most :data:`MAX_BUNDLE_BYTES`:

- :func:`bundle` deflates the RecordDict's object tree with Flower's own serialization
  (``InflatableObject.deflate``) and carries every object's bytes in one ConfigRecord,
  :data:`BUNDLE`, so the message is three objects (message, RecordDict, that record);
- :func:`unbundle` gives back exactly the RecordDict that was bundled, with Flower's own
  ``inflate``. It takes nothing on trust: every object's id is recomputed from its bytes
  (sha256, as the SuperLink does), only record types are accepted, every object must be
  part of the tree, and any other shape raises :class:`BundleError`;
- the ServerApp's grid bundles the instructions it pushes and unbundles the replies it
  pulls (:class:`~countyfl.federation.grid.PromptGrid`); a reply that does not unbundle
  is that node's error for the round, as any malformed reply is;
- the ClientApp's outermost mod (:func:`bundle_mod`) unbundles an instruction before the
  release guard and the site's policy see it, and bundles the reply after the guard has
  let it go: the guard checks exactly the records that leave, and the bundle only
  encodes them. A node answers a bundled instruction with a bundled reply (unless the
  reply is too large), and a plain one with a plain one.

What leaves a site is unchanged: the same records, field for field (the release
inventory, docs/privacy.md), in one object instead of several. (Not to be confused with
CKKS packing, which puts many values in one ciphertext.)
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.inflatable.inflatable_object import (
    InflatableObject,
    get_all_nested_objects,
    get_object_head_values_from_object_content,
    get_object_id,
)
from flwr.supercore.inflatable.inflatable_utils import (
    inflate_object_from_contents,
    validate_object_content,
)

from countyfl import protocol

BUNDLE = "countyfl.bundle"
"""The one record of a bundled message's RecordDict."""
OBJECTS = "objects"
"""Its value: the deflated objects of the RecordDict's tree, children before parents."""
FORMAT = "format"
BUNDLE_FORMAT = 1
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
"""Larger contents travel as Flower sends them, chunked (its chunks are 5 MiB)."""
MAX_OBJECTS = 4096
RECORD_TYPES = frozenset(
    {"RecordDict", "ArrayRecord", "Array", "ArrayChunk", "ConfigRecord", "MetricRecord"}
)


class BundleError(ValueError):
    """Packed contents that are not a well-formed RecordDict."""


def bundle(content: RecordDict, *, limit: int = MAX_BUNDLE_BYTES) -> RecordDict | None:
    """``content`` as one record (a bundle), or None when its objects exceed ``limit`` bytes."""
    objects = [obj.deflate() for obj in get_all_nested_objects(content).values()]
    if sum(len(body) for body in objects) > limit or len(objects) > MAX_OBJECTS:
        return None
    return RecordDict({BUNDLE: ConfigRecord({FORMAT: BUNDLE_FORMAT, OBJECTS: objects})})


def is_bundled(content: RecordDict) -> bool:
    """Whether ``content`` is a bundle (one record named :data:`BUNDLE`)."""
    return list(content) == [BUNDLE]


def unbundle(content: RecordDict) -> RecordDict:
    """The RecordDict :func:`bundle` put into ``content``; BundleError if it is not one."""
    record = content.get(BUNDLE) if is_bundled(content) else None
    if not isinstance(record, ConfigRecord) or set(record) != {FORMAT, OBJECTS}:
        raise BundleError("a bundle must be one record of a format and objects")
    if record[FORMAT] != BUNDLE_FORMAT:
        raise BundleError(f"a bundle of format {record[FORMAT]!r} (this node reads 1)")
    values = record[OBJECTS]
    if not isinstance(values, list) or not values or len(values) > MAX_OBJECTS:
        raise BundleError(f"a bundle must hold 1 to {MAX_OBJECTS} objects")
    objects = [body for body in values if isinstance(body, bytes)]
    if len(objects) != len(values):
        raise BundleError("a bundle's objects must be bytes")
    if sum(len(body) for body in objects) > MAX_BUNDLE_BYTES:
        raise BundleError(f"a bundle exceeds {MAX_BUNDLE_BYTES} bytes")
    contents: dict[str, bytes] = {}
    for body in objects:
        try:
            validate_object_content(body)
            kind, children, _ = get_object_head_values_from_object_content(body)
        except Exception as error:  # Flower's UnexpectedObjectContentError is no ValueError
            raise BundleError(f"a bundled object is malformed: {error}") from None
        if kind not in RECORD_TYPES:
            raise BundleError(f"a bundled object of type {kind!r} is not a record")
        if any(child not in contents for child in children):
            raise BundleError("a bundled object comes before one of its children")
        object_id = get_object_id(body)
        if object_id in contents:
            raise BundleError("a bundled object appears twice")
        contents[object_id] = body
    root = get_object_id(objects[-1])
    if get_object_head_values_from_object_content(objects[-1])[0] != "RecordDict":
        raise BundleError("a bundle must end with its RecordDict")
    try:
        inflated: InflatableObject = inflate_object_from_contents(root, contents)
    except Exception as error:  # Flower's inflate of foreign bytes may raise anything
        raise BundleError(f"a bundle does not inflate ({type(error).__name__})") from None
    if contents:
        raise BundleError(f"a bundle holds {len(contents)} objects outside its tree")
    if not isinstance(inflated, RecordDict):
        raise BundleError("a bundle must end with its RecordDict")
    return inflated


def bundle_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The ClientApp's outermost mod: a bundled instruction is unbundled for the rest of
    the app (the release guard, the site's policy, the handler), and its reply bundled."""
    if message.has_error() or not is_bundled(message.content):
        return call_next(message, context)
    try:
        message.content = unbundle(message.content)
    except BundleError as error:
        return Message(
            error=Error(
                code=protocol.SITE_FAILURE_ERROR_CODE,
                reason=f"the site could not read the county's message: {error}",
            ),
            reply_to=message,
        )
    reply = call_next(message, context)
    if reply.has_content():
        bundled = bundle(reply.content)
        if bundled is not None:
            reply.content = bundled
    return reply
