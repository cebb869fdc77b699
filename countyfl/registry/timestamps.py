"""Timezone-aware UTC timestamps of the registry (SQLite hands them back without a zone)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC time; a naive value is taken to be UTC already.

    The registry stores UTC only, and SQLite returns stored times without their zone.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
