"""Time, passed in: dedup windows, the circuit breaker and notification rate limits read a `Clock`.

Tests drive a fake clock (tests/support/doubles.py) instead of sleeping; production uses `SystemClock`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware UTC (stored and reported)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (durations, rate limits)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


__all__ = ["Clock", "SystemClock"]
