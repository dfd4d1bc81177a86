"""The one timestamp format of every record, request and file: ISO 8601 in UTC with a `Z`.

iso_utc(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(when: datetime) -> str:
    """`when` in UTC as ISO 8601 with a `Z`; a naive time is refused (it would be silently wrong)."""
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_utc_or_none(when: datetime | None) -> str | None:
    return None if when is None else iso_utc(when)


def utc_now() -> datetime:
    return datetime.now(UTC)


__all__ = ["iso_utc", "iso_utc_or_none", "utc_now"]
