"""The ClientApp's outermost mod: nothing leaves the site that the release inventory lacks.

Every reply is checked against :func:`countyfl.privacy.release.inventory` for the run's
encryption and DP settings before Flower sends it: a field the inventory does not list,
or an update the inventory says is encrypted that is not, is never sent; the site
replies with an error naming the field instead, and logs it. An exception inside the
ClientApp would otherwise reach the server with its message (Flower sends
``str(exception)``); the guard replies with the exception's kind only, unless it is one
of countyfl's own errors, whose messages never hold patient values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod

from countyfl import protocol
from countyfl.errors import CountyflError
from countyfl.federation import fused
from countyfl.privacy.he.wire import CHUNK_PREFIX, META_KEY
from countyfl.privacy.modes import CalibrationName
from countyfl.privacy.release import (
    ERROR_CODE,
    ERROR_REASON,
    ERROR_RECORD,
    Phase,
    Protection,
    ReleasedField,
    find,
    inventory,
)
from countyfl.run_config import EncryptionName, RunConfig, parse_run_config

logger = logging.getLogger(__name__)

# Error codes a site's reply may carry (the inventory's refusal.code)
REPLY_ERROR_CODES = frozenset({protocol.REFUSED_ERROR_CODE, protocol.SITE_FAILURE_ERROR_CODE})
_PHASES = {"train": Phase.TRAIN, "evaluate": Phase.EVALUATE}


def release_problems(reply: Message, phase: Phase, fields: tuple[ReleasedField, ...]) -> list[str]:
    """Why ``reply`` must not leave the site (empty when everything is in the inventory)."""
    if reply.has_error():
        return _error_problems(reply.error.code, fields)
    return _record_problems(reply.content.items(), phase, fields)


def _error_problems(code: int, fields: tuple[ReleasedField, ...]) -> list[str]:
    find(fields, Phase.REFUSAL, ERROR_RECORD, ERROR_CODE)
    find(fields, Phase.REFUSAL, ERROR_RECORD, ERROR_REASON)
    if code not in REPLY_ERROR_CODES:
        return [f"error code {code} is not a refusal the inventory lists"]
    return []


def fused_release_problems(reply: Message, fields: tuple[ReleasedField, ...]) -> list[str]:
    """:func:`release_problems` of a fused reply (:mod:`countyfl.federation.fused`): each
    record ``<phase>.<name>`` checked in its own phase, ``<phase>.error`` as a refusal."""
    if reply.has_error():
        return _error_problems(reply.error.code, fields)
    problems: list[str] = []
    parts: dict[str, list[tuple[str, Any]]] = {}
    for name, record in reply.content.items():
        phase, _, key = name.partition(".")
        if phase not in fused.PHASES or not key:
            problems.append(f"{name} is a record of neither phase of a fused reply")
            continue
        parts.setdefault(phase, []).append((key, record))
    for phase, records in parts.items():
        if any(key == fused.ERROR for key, _ in records):
            problems += _error_record_problems(phase, records, fields)
        else:
            problems += _record_problems(records, _PHASES[phase], fields)
    return problems


def _error_record_problems(
    phase: str, records: list[tuple[str, Any]], fields: tuple[ReleasedField, ...]
) -> list[str]:
    """A fused reply's ``<phase>.error``: alone, and exactly what an error reply holds."""
    record = records[0][1] if len(records) == 1 else None
    if not isinstance(record, ConfigRecord) or set(record) != {
        fused.ERROR_CODE,
        fused.ERROR_REASON,
    }:
        return [f"{phase}.{fused.ERROR} must be alone and hold only a code and a reason"]
    code, reason = record[fused.ERROR_CODE], record[fused.ERROR_REASON]
    if type(code) is not int or not isinstance(reason, str):
        return [f"{phase}.{fused.ERROR} must be an integer code and a text reason"]
    if len(reason) > fused.MAX_REASON:
        return [f"{phase}.{fused.ERROR} has a reason longer than {fused.MAX_REASON} characters"]
    return _error_problems(code, fields)


def _record_problems(
    records: Iterable[tuple[str, Any]], phase: Phase, fields: tuple[ReleasedField, ...]
) -> list[str]:
    problems = []
    for name, record in records:
        if isinstance(record, ArrayRecord):
            try:
                field = find(fields, phase, name, "*")
            except KeyError:
                problems.append(f"{phase.value}:{name} (arrays) is not in the release inventory")
                continue
            if field.protection is Protection.ENCRYPTED and not _ciphertexts_only(name, record):
                problems.append(
                    f"{field.path} must be CKKS ciphertexts, but the reply holds plaintext arrays"
                )
        elif isinstance(record, MetricRecord | ConfigRecord):
            for key in record:
                try:
                    find(fields, phase, name, key)
                except KeyError:
                    problems.append(f"{phase.value}:{name}.{key} is not in the release inventory")
        else:
            problems.append(f"{phase.value}:{name} is a record the release inventory lacks")
    return problems


def _ciphertexts_only(name: str, record: ArrayRecord) -> bool:
    names = list(record)
    if name == protocol.CALIBRATION_SUMS:  # one serialized CKKS vector, as bytes
        array = record[protocol.CIPHERTEXT] if names == [protocol.CIPHERTEXT] else None
        # A ciphertext is ~130 KB; three plaintext floats are 24 bytes.
        return array is not None and array.dtype == "uint8" and len(array.data) >= 1024
    return META_KEY in names and all(n == META_KEY or n.startswith(CHUNK_PREFIX) for n in names)


def _fields(config: RunConfig) -> tuple[ReleasedField, ...]:
    return inventory(
        encrypted=config.encryption is EncryptionName.CKKS,
        dp=config.dp,
        calibration=config.calibration is not CalibrationName.NONE,
        distributed=config.dp_noise_shares > 1,
    )


def release_guard(config: RunConfig | None = None) -> Mod:
    """The mod that sends a reply only if every field of it is in the release inventory.

    ``config``: the run config the ClientApp was built with; None means Flower's run
    config of the message (so that the guard checks the task the app really runs).
    """

    def guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            cfg = config if config is not None else parse_run_config(context.run_config)
            reply = call_next(msg, context)
        except CountyflError as error:
            logger.warning("refusing %s: %s", msg.metadata.message_type, error)
            return Message(
                error=Error(code=protocol.SITE_FAILURE_ERROR_CODE, reason=str(error)), reply_to=msg
            )
        except Exception as error:
            # The message of a foreign exception may hold anything: only its kind leaves.
            logger.exception("the ClientApp failed on a %s message", msg.metadata.message_type)
            reason = (
                f"the site's ClientApp failed ({type(error).__name__}); the site's log has "
                "the details"
            )
            return Message(
                error=Error(code=protocol.SITE_FAILURE_ERROR_CODE, reason=reason), reply_to=msg
            )
        phase = _PHASES.get(msg.metadata.message_type.split(".")[0])
        if msg.metadata.message_type == fused.FUSED:
            problems = fused_release_problems(reply, _fields(cfg))
        elif phase is None:
            problems = [f"message type {msg.metadata.message_type!r} has no release inventory"]
        else:
            problems = release_problems(reply, phase, _fields(cfg))
        if not problems:
            return reply
        logger.error("release refused: %s", "; ".join(problems))
        return Message(
            error=Error(
                code=protocol.SITE_FAILURE_ERROR_CODE,
                reason="the site refused to send its reply: " + "; ".join(problems),
            ),
            reply_to=msg,
        )

    return guard


release_guard_mod = release_guard()
