"""Query times: ISO 8601 (naive means UTC) or relative to now, like `24h` or `7d`."""

from __future__ import annotations

from datetime import UTC, datetime

from endpoint_admin.durations import parse_duration
from endpoint_contract.bounds import check_time
from server_stub.errors import BadRequest


def parse_time(name: str, text: str | None, now: datetime) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        return check_time(now - parse_duration(text))
    except (ValueError, OverflowError):
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name}: {text[:64]!r} is neither an ISO 8601 time nor a relative time like 24h or 7d"
        ) from None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    try:
        return check_time(value).astimezone(UTC)
    except ValueError as exc:  # year 1 or 9999 with an offset: no UTC time to compare with
        raise BadRequest(f"{name}: {exc}") from None
