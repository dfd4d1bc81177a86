"""When the next talk to the server is due: a steady interval while it answers, backoff while it does not.

    schedule = ReportSchedule(interval=60, clock=clock, rng=random.Random())
    if schedule.due():
        try: ...; schedule.succeeded()
        except ServerUnavailable as exc: schedule.failed(exc.retry_after)

A fleet must not stampede a server that comes back, so every wait is randomised:
- the first round comes at a random point of the first interval (a fleet booted at 9:00 spreads);
- after a success, the next round is one interval away, +-10 %;
- after the n-th failure in a row, "full jitter" (AWS architecture blog): a uniform draw from
  [0, min(cap, base * 2**(n-1))]; a server's `Retry-After` is a floor the draw is added to, so
  agents told "30 s" do not all return at second 30.
Time comes from the injected `Clock` (monotonic) and randomness from an injected `random.Random`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from endpoint_agent.clock import Clock

# A server's Retry-After beyond this is treated as this (a typo must not silence an agent for a day).
MAX_RETRY_AFTER = 3600.0
_STEADY_JITTER = 0.1


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 2.0
    cap: float = 300.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={self.base} cap={self.cap}")

    @classmethod
    def for_interval(cls, interval: float) -> BackoffPolicy:
        """Scaled to the upload interval: start at most 5 s (or one interval), give up to 10 intervals,
        never more than 5 minutes between attempts."""
        base = min(5.0, interval)
        return cls(base=base, cap=max(base, min(300.0, 10 * interval)))

    def window(self, failures: int) -> float:
        """The upper bound of the jittered wait after `failures` failures in a row (>= 1)."""
        exponent = min(max(failures, 1) - 1, 62)  # 2**62 * base is past any cap; avoid float overflow
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, failures: int, rng: random.Random, retry_after: float | None = None) -> float:
        jitter = rng.uniform(0.0, self.window(failures))
        if retry_after is None:
            return jitter
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER) + jitter


class ReportSchedule:
    """Decides when the next report round (upload + heartbeat) may start. Not thread-safe: one job owns it."""

    def __init__(
        self,
        interval: float,
        *,
        clock: Clock,
        rng: random.Random,
        policy: BackoffPolicy | None = None,
        first_within: float | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self.policy = policy or BackoffPolicy.for_interval(interval)
        self._clock = clock
        self._rng = rng
        self.failures = 0
        spread = interval if first_within is None else first_within
        self._next = clock.monotonic() + rng.uniform(0.0, max(spread, 0.0))

    def due(self) -> bool:
        return self._clock.monotonic() >= self._next

    def seconds_until_due(self) -> float:
        return max(0.0, self._next - self._clock.monotonic())

    def succeeded(self, *, more: bool = False) -> None:
        """A round went through; `more`: work is left over, come back at once."""
        self.failures = 0
        if more:
            self._next = self._clock.monotonic()
            return
        factor = self._rng.uniform(1.0 - _STEADY_JITTER, 1.0 + _STEADY_JITTER)
        self._next = self._clock.monotonic() + self.interval * factor

    def failed(self, retry_after: float | None = None) -> float:
        """A round failed (temporarily); returns the wait before the next attempt."""
        self.failures += 1
        wait = self.policy.delay(self.failures, self._rng, retry_after)
        self._next = self._clock.monotonic() + wait
        return wait


__all__ = ["MAX_RETRY_AFTER", "BackoffPolicy", "ReportSchedule"]
