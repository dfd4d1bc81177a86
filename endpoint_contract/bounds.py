"""The bounds every uploaded value is held to, so that no field can break a store or a listing.

One walk (`json_problem`) checks what an event may carry beyond its typed keys (`extra`, an agent
event's `detail`, ...): nesting depth, key and string sizes, no lone surrogate (no encoder or
database takes one), no NUL (PostgreSQL text refuses it), integers that fit a signed 64-bit
column, finite numbers. `Timestamp` is an aware time in a range every database and every
timezone conversion can hold (year 1 with an offset cannot be turned into UTC).

    json_problem({"a": {"b": "x\\x00"}}) == "a.b: NUL character in text"
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime

MAX_DEPTH = 32  # objects and lists inside an event (the contract's own records need 3)
MAX_KEY = 256
MAX_STRING = 64 * 1024
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str, limit: int = MAX_STRING) -> str | None:
    """Why `text` cannot be stored as is, or None."""
    if len(text) > limit:
        return f"text longer than {limit} characters"
    if "\x00" in text:
        return "NUL character in text"
    if not text.isascii() and _SURROGATE.search(text):
        return "lone surrogate in text (escape non-UTF-8 bytes)"
    return None


def json_problem(value: Any, where: str = "") -> str | None:
    """The first thing in a decoded JSON value that no store takes, as 'path: why'; None if fine.

    Iterative, so a document nested as deep as the parser allowed costs no recursion.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        here = path or "body"
        if isinstance(item, dict):
            if depth >= MAX_DEPTH:
                return f"{here}: nested deeper than {MAX_DEPTH} levels"
            for key, sub in item.items():
                name = str(key)
                problem = text_problem(name, MAX_KEY)
                if problem is not None:
                    return f"{here}: key {_show(name)}: {problem}"
                stack.append((sub, f"{path}.{name}" if path else name, depth + 1))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                return f"{here}: nested deeper than {MAX_DEPTH} levels"
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return f"{here}: {problem}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return f"{here}: integer out of the signed 64-bit range"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{here}: NaN and Infinity are not valid JSON numbers"
    return None


def _show(name: str) -> str:
    """A key as it can be shown in an error message (which must itself be encodable)."""
    return repr(name[:40].encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace"))


_NAIVE_MIN = TIME_MIN.replace(tzinfo=None)
_NAIVE_MAX = TIME_MAX.replace(tzinfo=None)


def check_time(value: datetime) -> datetime:
    # Judged on the local wall time first: converting year 1 or 9999 with an offset overflows.
    if not _NAIVE_MIN <= value.replace(tzinfo=None) < _NAIVE_MAX:
        raise ValueError(f"time out of range ({TIME_MIN.year} to {TIME_MAX.year - 1})")
    return value


Timestamp = Annotated[AwareDatetime, AfterValidator(check_time)]
"""An aware time between TIME_MIN and TIME_MAX (its offset kept)."""


__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_KEY",
    "MAX_STRING",
    "TIME_MAX",
    "TIME_MIN",
    "Timestamp",
    "check_time",
    "json_problem",
    "text_problem",
]
