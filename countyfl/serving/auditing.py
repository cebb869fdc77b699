"""What the API writes to the audit log: purpose, model version and a hash of the input.

Never the record itself: an entry holds the sha256 of the input's canonical JSON, i.e.
``json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` over the
validated records as the API schemas dump them (JSON mode). Whoever holds the record can
recompute the hash and find the entry; the entry alone does not reveal the record beyond
what guessing a whole record and hashing it would (clinical records have few plausible
values, so treat these hashes as pseudonymous, not anonymous).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

from countyfl.registry import AuditSink, Outcome, Principal
from countyfl.serving.errors import InvalidRecordError, ModelIntegrityError, ServingError


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no whitespace, NaN refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def json_sha256(value: Any) -> str:
    """The sha256 (hex) of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def input_sha256(records: Sequence[BaseModel]) -> str:
    """The sha256 (hex) of the canonical JSON of validated input records (a list)."""
    return json_sha256([record.model_dump(mode="json") for record in records])


def entry_number(entry: object) -> int:
    """The sequence number of an appended audit entry (0 if the sink returns none)."""
    seq = getattr(entry, "seq", None)
    return seq if isinstance(seq, int) else 0


class PurposeSink:
    """An audit sink that adds the request's purpose (and more context) to every entry.

    The registry's read functions audit their own reads; wrapping the log in this sink lets
    those entries carry the purpose the caller declared, without a second entry.

    Parameters
    ----------
    inner : AuditSink
        The audit log.
    context : mapping
        Added to every entry's details, e.g. ``{"purpose": "treatment", "via": "api"}``.
    """

    def __init__(self, inner: AuditSink, context: Mapping[str, object]) -> None:
        self._inner = inner
        self._context = dict(context)

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        details: Mapping[str, object] | None = None,
    ) -> object:
        """Append to the inner sink with the context added to ``details``."""
        return self._inner.append(
            actor=actor,
            role=role,
            action=action,
            target=target,
            outcome=outcome,
            details={**self._context, **dict(details or {})},
        )


@contextmanager
def audited_refusals(
    audit: AuditSink, principal: Principal, action: str, target: str
) -> Iterator[None]:
    """Audit a :class:`ServingError` raised in the block before it propagates.

    An integrity failure is recorded as ``failed``, anything else (no such model, no
    production version, invalid input) as ``refused``; the details carry the error code
    and, for invalid input, the names of the fields at fault (never their values).
    """
    try:
        yield
    except ServingError as error:
        details: dict[str, object] = {"reason": error.code}
        if isinstance(error, InvalidRecordError):
            details["fields"] = [problem.field for problem in error.problems]
        outcome = Outcome.FAILED if isinstance(error, ModelIntegrityError) else Outcome.REFUSED
        audit.append(
            actor=principal.username,
            role=principal.role.value,
            action=action,
            target=target,
            outcome=outcome.value,
            details=details,
        )
        raise
