"""When to poll the server: every `interval` +-20% after a success; after failures, exponential
backoff with full jitter up to 15 minutes, never sooner than the server's `Retry-After`.

The jitter spreads a fleet's polls over time (no thundering herd after an outage or at 9:00);
the clock and the random source are passed in, so the schedule is tested without sleeping.

    schedule = PollSchedule(60.0, clock=SystemClock(), rng=random.Random())
    loop = PollLoop(sync.poll, schedule)
    loop.run(stop_event)            # in its own thread; or loop.run_due() from a test
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from endpoint_agent.clock import Clock
from endpoint_agent.errors import AgentError, ServerRejected, ServerUnavailable

logger = logging.getLogger(__name__)

JITTER = 0.2
BACKOFF_MAX = 15 * 60.0
_BACKOFF_BASE_MAX = 10.0
# The loop re-checks at least this often (a stop request is noticed at once anyway).
_MAX_WAIT = 60.0


class PollSchedule:
    def __init__(
        self,
        interval: float,
        *,
        clock: Clock,
        rng: random.Random,
        jitter: float = JITTER,
        backoff_base: float | None = None,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.interval = interval
        self._clock = clock
        self._rng = rng
        self._jitter = jitter
        self.backoff_base = backoff_base if backoff_base is not None else min(interval, _BACKOFF_BASE_MAX)
        self.backoff_max = max(backoff_max, self.backoff_base)
        self.failures = 0
        self.next_due = clock.monotonic()  # the first poll happens at once

    def due(self) -> bool:
        return self._clock.monotonic() >= self.next_due

    def seconds_until_due(self) -> float:
        return max(0.0, self.next_due - self._clock.monotonic())

    def succeeded(self) -> float:
        """Schedule the next regular poll; returns its delay."""
        self.failures = 0
        delay = self.interval * self._rng.uniform(1 - self._jitter, 1 + self._jitter)
        return self._set(delay)

    def failed(self, retry_after: float | None = None) -> float:
        """Schedule a retry after one more failure; returns its delay."""
        self.failures += 1
        # 2**n overflows a float for huge n; past 60 doublings the cap is reached anyway.
        cap = min(self.backoff_max, self.backoff_base * 2.0 ** min(self.failures - 1, 60))
        delay = max(min(1.0, self.backoff_base), self._rng.uniform(0.0, cap))  # "full jitter"
        if retry_after is not None and retry_after > delay:
            # A floor, spread upwards: a fleet told "30 s" must not come back in the same second.
            delay = retry_after * self._rng.uniform(1.0, 1.0 + self._jitter)
        return self._set(delay)

    def _set(self, delay: float) -> float:
        self.next_due = self._clock.monotonic() + delay
        return delay


class PollLoop:
    """Runs `poll` whenever the schedule says so; a failure only moves the next attempt."""

    def __init__(
        self, poll: Callable[[], object], schedule: PollSchedule, *, name: str = "policy sync"
    ) -> None:
        self._poll = poll
        self.schedule = schedule
        self._name = name

    def run_due(self) -> bool:
        """Poll if due; True when it did. Never raises (the loop must outlive any failure)."""
        if not self.schedule.due():
            return False
        try:
            self._poll()
        except ServerUnavailable as exc:
            delay = self.schedule.failed(exc.retry_after)
            self._failed(exc, delay)
        except (ServerRejected, AgentError) as exc:
            delay = self.schedule.failed()
            self._failed(exc, delay)
        except Exception:
            delay = self.schedule.failed()
            logger.exception("%s failed unexpectedly; retrying in %.1fs", self._name, delay)
        else:
            self.schedule.succeeded()
        return True

    def _failed(self, exc: AgentError, delay: float) -> None:
        logger.warning(
            "%s failed (%d in a row): %s; retrying in %.1fs", self._name, self.schedule.failures, exc, delay
        )

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set (for a dedicated thread)."""
        while not stop.is_set():
            self.run_due()
            stop.wait(min(self.schedule.seconds_until_due(), _MAX_WAIT))


__all__ = ["BACKOFF_MAX", "JITTER", "PollLoop", "PollSchedule"]
