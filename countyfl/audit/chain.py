"""The audit chain's math: entry fields, their canonical encoding and SHA-256 entry hashes.

Encoding, version 1 (what a regulator re-implements to check the chain)
-----------------------------------------------------------------------
An entry has nine fields, all stored as text exactly as they are hashed:

=========== ==============================================================================
seq         the entry's sequence number in decimal ASCII, no sign, no leading zeros;
            the first entry is 1 and every next entry is the previous one plus 1
recorded_at UTC time, always ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (27 characters, microseconds)
actor       the user name that acted
role        the actor's role (``admin``, ``clinician``, ``node``, ...)
action      what was done, dotted kebab-case (``model.promote``, ``round.reply-rejected``)
target      what it was done to (may be empty)
outcome     ``ok``, ``refused`` or ``failed``
details     a JSON object in canonical form: keys sorted, no whitespace (separators ``,``
            and ``:``), non-ASCII characters written as themselves (UTF-8), control
            characters escaped as JSON requires; i.e. Python's ``json.dumps(details,
            sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. The hash covers
            this stored text verbatim, so a verifier never re-serialises JSON.
prev_hash   the ``entry_hash`` of entry ``seq - 1``; for entry 1, 64 ASCII zeros
=========== ==============================================================================

``entry_hash`` is the SHA-256 digest, written as 64 lowercase hexadecimal characters, of
the UTF-8 bytes of::

    "countyfl-audit-v1" NUL seq NUL recorded_at NUL actor NUL role NUL action NUL
    target NUL outcome NUL details NUL prev_hash

where NUL is the single byte 0x00 (nine separators, none at the end). No field may contain
U+0000 (``append`` refuses it; JSON escapes it as ``\\u0000`` inside ``details``), so the ten
parts can be split back apart unambiguously: two different entries never share an encoding.
A stored entry with a NUL in a field is therefore itself evidence of tampering.

The chain is intact when, reading entries in ``seq`` order, the sequence numbers run 1, 2,
3, ... without a gap or repeat, every ``prev_hash`` equals the previous entry's
``entry_hash`` (64 zeros for entry 1) and every ``entry_hash`` equals the SHA-256 above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from hashlib import sha256
from typing import Any

from countyfl.audit.errors import AuditEntryInvalidError

ENCODING_TAG = "countyfl-audit-v1"
"""The first part of every entry's hash input; a new encoding gets a new tag."""

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of entry 1."""

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""``recorded_at`` as stored and hashed: UTC with microseconds, e.g. 2026-11-28T09:15:02.000341Z."""

ENTRY_FIELDS = (
    "seq",
    "recorded_at",
    "actor",
    "role",
    "action",
    "target",
    "outcome",
    "details",
    "prev_hash",
    "entry_hash",
)
"""The columns of a stored entry, in the order of :data:`EntryRow`."""

EntryRow = tuple[int, str, str, str, str, str, str, str, str, str]
"""A stored entry as raw values, in the order of :data:`ENTRY_FIELDS`."""

_ACTION = re.compile(r"[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*")
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_SEPARATORS_IN_ENCODING = 9


class Outcome(StrEnum):
    """How an audited action ended."""

    OK = "ok"
    """It was done."""
    REFUSED = "refused"
    """It was not allowed (permission, privacy budget, policy, a rejected reply)."""
    FAILED = "failed"
    """It was allowed but did not complete."""


@dataclass(frozen=True)
class ChainHead:
    """The last entry of a chain: its sequence number and hash (0 and 64 zeros when empty)."""

    seq: int
    entry_hash: str


GENESIS = ChainHead(0, GENESIS_HASH)
"""The head of an empty chain."""


def format_time(moment: datetime) -> str:
    """``moment`` as ``recorded_at`` text (UTC, microseconds).

    Raises
    ------
    AuditEntryInvalidError
        If ``moment`` is naive: a time without a zone cannot be placed on the UTC chain.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise AuditEntryInvalidError(
            f"audit time {moment.isoformat()} has no time zone; pass an aware datetime "
            "(e.g. datetime.now(UTC))"
        )
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """The aware UTC datetime of ``recorded_at`` text written by :func:`format_time`."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def is_time_text(text: str) -> bool:
    """Whether ``text`` has the exact form of ``recorded_at``."""
    return _TIME.fullmatch(text) is not None


def is_hash_text(text: str) -> bool:
    """Whether ``text`` is 64 lowercase hexadecimal characters."""
    return _HEX_HASH.fullmatch(text) is not None


def canonical_details(details: Mapping[str, object] | None) -> str:
    """The canonical JSON text of ``details`` (``{}`` for None).

    Raises
    ------
    AuditEntryInvalidError
        If ``details`` is not a mapping or holds values JSON cannot represent (NaN,
        infinities, objects, non-string keys that cannot be sorted).
    """
    if details is None:
        return "{}"
    if not isinstance(details, Mapping):
        raise AuditEntryInvalidError(
            f"audit details must be a mapping (a JSON object), not {type(details).__name__}"
        )
    try:
        return json.dumps(
            dict(details),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as error:
        raise AuditEntryInvalidError(
            f"audit details cannot be written as canonical JSON ({error}); pass only strings, "
            "numbers (finite), booleans, None, lists and mappings with string keys"
        ) from error


def encode_entry(
    seq: int,
    recorded_at: str,
    actor: str,
    role: str,
    action: str,
    target: str,
    outcome: str,
    details: str,
    prev_hash: str,
) -> bytes:
    """The bytes that an entry's hash is taken over (see the module docstring).

    Raises
    ------
    ValueError
        If a field contains U+0000 (no valid entry does) or a lone surrogate (not UTF-8).
    """
    text = (
        f"{ENCODING_TAG}\0{seq}\0{recorded_at}\0{actor}\0{role}\0{action}\0{target}\0"
        f"{outcome}\0{details}\0{prev_hash}"
    )
    if text.count("\0") != _SEPARATORS_IN_ENCODING:
        raise ValueError("an audit entry field contains a NUL character")
    return text.encode("utf-8")


def hash_entry(
    seq: int,
    recorded_at: str,
    actor: str,
    role: str,
    action: str,
    target: str,
    outcome: str,
    details: str,
    prev_hash: str,
) -> str:
    """The ``entry_hash`` of an entry's fields: SHA-256 of :func:`encode_entry`, in hex.

    Raises
    ------
    ValueError
        As :func:`encode_entry`.
    """
    # The encoding is inlined (not a call to encode_entry) because verification runs this
    # a million times; tests check both agree.
    text = (
        f"{ENCODING_TAG}\0{seq}\0{recorded_at}\0{actor}\0{role}\0{action}\0{target}\0"
        f"{outcome}\0{details}\0{prev_hash}"
    )
    if text.count("\0") != _SEPARATORS_IN_ENCODING:
        raise ValueError("an audit entry field contains a NUL character")
    return sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewEntry:
    """The caller-given fields of an entry, validated; seq, time and hashes come later."""

    actor: str
    role: str
    action: str
    target: str
    outcome: Outcome
    details: str
    """Canonical JSON text."""


def validate_new_entry(
    *,
    actor: str,
    role: str,
    action: str,
    target: str,
    outcome: str,
    details: Mapping[str, object] | None = None,
) -> NewEntry:
    """Check the fields of an entry to append and canonicalise its details.

    Raises
    ------
    AuditEntryInvalidError
        If a field is empty where it must not be, has the wrong form, contains NUL or a lone
        surrogate, or the outcome is not an :class:`Outcome`.
    """
    for name, value in (("actor", actor), ("role", role), ("action", action), ("target", target)):
        if not isinstance(value, str):
            raise AuditEntryInvalidError(
                f"audit entry field {name!r} must be a string, not {type(value).__name__}"
            )
        if "\0" in value:
            raise AuditEntryInvalidError(
                f"audit entry field {name!r} contains a NUL character; remove it"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise AuditEntryInvalidError(
                f"audit entry field {name!r} is not valid Unicode ({error.reason}); "
                "pass text without lone surrogates"
            ) from None
    for name, value in (("actor", actor), ("role", role)):
        if not value.strip():
            raise AuditEntryInvalidError(
                f"audit entry field {name!r} is empty; every entry names who acted and in "
                "which role ('system' for the platform itself)"
            )
    if _ACTION.fullmatch(action) is None:
        raise AuditEntryInvalidError(
            f"audit action {action!r} is not dotted kebab-case; use names like "
            "'model.promote', 'round.reply-rejected' or 'login'"
        )
    try:
        checked_outcome = Outcome(outcome)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in Outcome)
        raise AuditEntryInvalidError(f"audit outcome {outcome!r} is not one of {allowed}") from None
    text = canonical_details(details)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise AuditEntryInvalidError(
            f"audit details are not valid Unicode ({error.reason}); "
            "pass text without lone surrogates"
        ) from None
    return NewEntry(actor, role, action, target, checked_outcome, text)


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit log, as stored and hashed."""

    seq: int
    recorded_at: datetime
    """Aware, UTC, microsecond precision."""
    actor: str
    role: str
    action: str
    target: str
    outcome: Outcome
    details_json: str
    """The canonical JSON text of the details, exactly as hashed."""
    prev_hash: str
    entry_hash: str

    @property
    def details(self) -> dict[str, Any]:
        """The details as a (fresh) dict."""
        parsed: dict[str, Any] = json.loads(self.details_json)
        return parsed

    def to_row(self) -> EntryRow:
        """The entry's stored values, in the order of :data:`ENTRY_FIELDS`."""
        return (
            self.seq,
            format_time(self.recorded_at),
            self.actor,
            self.role,
            self.action,
            self.target,
            self.outcome.value,
            self.details_json,
            self.prev_hash,
            self.entry_hash,
        )

    @classmethod
    def from_row(cls, row: EntryRow) -> AuditEntry:
        """The entry of stored values (not verified: see :func:`verify_chain`)."""
        seq, recorded_at, actor, role, action, target, outcome, details, prev, entry_hash = row
        return cls(
            seq,
            parse_time(recorded_at),
            actor,
            role,
            action,
            target,
            Outcome(outcome),
            details,
            prev,
            entry_hash,
        )


def seal_entry(new: NewEntry, *, seq: int, recorded_at: str, prev_hash: str) -> EntryRow:
    """The stored row of ``new`` placed at ``seq`` after an entry hashed ``prev_hash``."""
    fields = (
        seq,
        recorded_at,
        new.actor,
        new.role,
        new.action,
        new.target,
        new.outcome.value,
        new.details,
        prev_hash,
    )
    return (*fields, hash_entry(*fields))


def build_chain(
    entries: Iterable[tuple[NewEntry, str]], *, after: ChainHead = GENESIS
) -> Iterator[EntryRow]:
    """Chain ``(entry, recorded_at)`` pairs after ``after``, yielding stored rows.

    The pure counterpart of appending one by one: tests and the benchmark use it to make
    large valid chains quickly.
    """
    seq, prev_hash = after.seq, after.entry_hash
    for new, recorded_at in entries:
        seq += 1
        row = seal_entry(new, seq=seq, recorded_at=recorded_at, prev_hash=prev_hash)
        prev_hash = row[-1]
        yield row
