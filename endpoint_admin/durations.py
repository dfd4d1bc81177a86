"""Durations such as `30d`, `24h`, `15m`, `90s`, `2w` (shared by the admin tool and the server)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """`'24h'` -> 24 hours. Raises ValueError naming the accepted forms."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: expected a number and a unit s, m, h, d or w (e.g. 24h)"
        )
    amount, unit = int(match.group(1)), match.group(2)
    seconds = amount * _UNITS[unit]
    if seconds > 100 * 365 * 86400:
        raise ValueError(f"invalid duration {text!r}: longer than 100 years")
    return timedelta(seconds=seconds)
