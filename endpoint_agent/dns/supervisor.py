"""Fail open: when the DNS filter cannot serve, the machine's resolver goes back to what it was.

Every `interval` seconds the supervisor checks that the forwarder's threads live, that its UDP
listener answers a probe it answers itself, and that some upstream answered recently (or
answers a probe now). After `failures_to_trip` failed checks in a row (a few seconds) it
restores the resolver configuration and reports `dns_filter_failed`; it keeps checking,
restarts a dead forwarder, and after `successes_to_recover` good checks points the resolver
at the filter again and reports `dns_filter_recovered`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from endpoint_agent.clock import Clock

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
RECENT_UPSTREAM_SECONDS = 5.0


class Supervised(Protocol):
    """What the supervisor needs of the filter (the NetGuard implements it; tests pass a double)."""

    def health(self) -> str | None:
        """None when the filter serves; else why not (one line)."""
        ...

    def fail_open(self, reason: str) -> None: ...

    def repair(self) -> None:
        """Restart what died (the forwarder); the resolver is left as it is."""
        ...

    def resume(self) -> bool:
        """Point the resolver at the filter again; True when done."""
        ...


@dataclass
class SupervisorState:
    failing: bool = False
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    trips: int = 0
    last_reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


class Supervisor:
    def __init__(
        self,
        target: Supervised,
        *,
        clock: Clock,
        interval: float = DEFAULT_INTERVAL,
        failures_to_trip: int = 2,
        successes_to_recover: int = 3,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self._target = target
        self._clock = clock
        self._interval = interval
        self._trip_after = failures_to_trip
        self._recover_after = successes_to_recover
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread: threading.Thread | None = None
        self.state = SupervisorState()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dns-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._wait(self._interval):
            try:
                self.check()
            except Exception:
                logger.exception("DNS filter supervision failed; checking again")

    def check(self) -> None:
        """One round (the thread's body; tests call it directly)."""
        reason = self._target.health()
        state = self.state
        if reason is None:
            state.consecutive_failures = 0
            state.consecutive_successes += 1
            recovered = state.consecutive_successes >= self._recover_after
            if state.failing and recovered and self._target.resume():
                state.failing = False
                logger.warning("DNS filter serves again; the resolver points at it again")
            return
        state.consecutive_successes = 0
        state.consecutive_failures += 1
        state.last_reason = reason
        if state.failing:
            self._target.repair()  # the resolver stays restored meanwhile
            return
        if state.consecutive_failures >= self._trip_after:
            state.failing = True
            state.trips += 1
            logger.error("DNS filter cannot serve (%s): resolver configuration restored (fail open)", reason)
            self._target.fail_open(reason)


__all__ = ["RECENT_UPSTREAM_SECONDS", "Supervised", "Supervisor", "SupervisorState"]
