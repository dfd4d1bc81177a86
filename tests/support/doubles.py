"""Test doubles of the agent's side effects: time, stopping processes, telling users.

Each stands in for one small interface of endpoint_agent (clock.Clock, enforce.terminate.Enforcer,
enforce.notify.Notifier) so the real pipeline around it can run in a test.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from endpoint_agent.enforce.notify import Notification
from endpoint_agent.enforce.terminate import BlockAction, EnforceResult
from endpoint_agent.types import Outcome, ProcessInfo


class FakeClock:
    """A clock that moves only when told to; thread-safe, so a background notifier may read it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2024, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds


@dataclass
class RecordingNotifier:
    """Test double: keeps what it was asked to show."""

    notifications: list[Notification] = field(default_factory=list)
    closed: bool = False

    def notify(self, notification: Notification) -> None:
        self.notifications.append(notification)

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


@dataclass
class RecordingEnforcer:
    """Test double: records what it was asked to stop and answers with `outcome` (no signal sent)."""

    outcome: Outcome = Outcome.KILLED
    calls: list[tuple[BlockAction, ProcessInfo]] = field(default_factory=list)

    def terminate(self, proc: ProcessInfo) -> EnforceResult:
        self.calls.append((BlockAction.TERMINATE, proc))
        return EnforceResult(self.outcome, "recorded", (proc.pid,))

    def suspend(self, proc: ProcessInfo) -> EnforceResult:
        self.calls.append((BlockAction.SUSPEND, proc))
        outcome = Outcome.SUSPENDED if self.outcome is Outcome.KILLED else self.outcome
        return EnforceResult(outcome, "recorded", (proc.pid,))

    @property
    def pids(self) -> list[int]:
        return [proc.pid for _, proc in self.calls]


__all__ = ["FakeClock", "RecordingEnforcer", "RecordingNotifier"]
