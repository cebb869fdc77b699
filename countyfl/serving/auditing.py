"""What the API writes to the audit log: purpose, model version and a hash of the input.

Nothing a client typed goes into an entry except through a whitelist: purposes are a
closed list, model names are checked against their pattern before anything is audited,
and the field paths of a refused request keep only the API schemas' own field names
(:func:`safe_field_path`): a key the client made up (which may be a patient's name or ID)
is recorded as ``<unknown>``.

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
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from pydantic import BaseModel

from countyfl.registry import AuditSink, Outcome, Principal
from countyfl.serving.errors import (
    InvalidRecordError,
    ModelIntegrityError,
    ModelOutputError,
    ServingError,
)

UNKNOWN_FIELD = "<unknown>"
_PATH_PART = re.compile(r"\[(\d{1,9})\]|([^.\[\]]+)")


def schema_field_names(models: Iterable[type[BaseModel]]) -> frozenset[str]:
    """Every field name of ``models`` and of the models nested in their fields."""
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    pending = list(models)
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.add(name)
            pending.extend(_models_in(info.annotation))
    return frozenset(names)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    found = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for argument in getattr(annotation, "__args__", ()) or ():
        found.extend(_models_in(argument))
    for item in getattr(annotation, "__metadata__", ()) or ():
        found.extend(_models_in(item))
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        found.extend(_models_in(origin))
    return found


@cache
def api_field_names() -> frozenset[str]:
    """Every field name of the API's request schemas (what a refused field may be called)."""
    from countyfl.serving import schemas

    return schema_field_names(
        [
            schemas.PredictionCreate,
            schemas.ReferralCreate,
            schemas.ReferralPatientCreate,
            schemas.SymptomCreate,
            *schemas.PATIENT_TYPES.values(),
        ]
    ) | {"body", "patient", "patients", "risk", "model"}


def safe_field_path(path: str, known: frozenset[str] | None = None) -> str:
    """``path`` (e.g. ``patients[2].resting_bp``) with every name not in ``known`` replaced.

    Indices are kept; a name the schemas do not define (a key the client made up) becomes
    :data:`UNKNOWN_FIELD`, so it never reaches the audit log. ``known`` defaults to
    :func:`api_field_names`.
    """
    known = api_field_names() if known is None else known
    parts = []
    for index, name in _PATH_PART.findall(path):
        if index:
            parts.append(f"[{int(index)}]")
        else:
            parts.append(("." if parts else "") + (name if name in known else UNKNOWN_FIELD))
    return "".join(parts) or UNKNOWN_FIELD


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
    audit: AuditSink,
    principal: Principal,
    action: str,
    target: str,
) -> Iterator[None]:
    """Audit a :class:`ServingError` raised in the block before it propagates.

    An integrity failure or a broken model's answer is recorded as ``failed``, anything else
    (no such model, no production version, invalid input) as ``refused``; the details carry
    the error code and, for invalid input, the paths of the fields at fault through
    :func:`safe_field_path` (never their values, never a name the client made up).
    """
    try:
        yield
    except ServingError as error:
        details: dict[str, object] = {"reason": error.code}
        if isinstance(error, InvalidRecordError):
            details["fields"] = [safe_field_path(problem.field) for problem in error.problems]
        failed = isinstance(error, ModelIntegrityError | ModelOutputError)
        outcome = Outcome.FAILED if failed else Outcome.REFUSED
        audit.append(
            actor=principal.username,
            role=principal.role.value,
            action=action,
            target=target,
            outcome=outcome.value,
            details=details,
        )
        raise
