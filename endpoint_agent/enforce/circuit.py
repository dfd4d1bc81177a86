"""Kill-rate circuit breaker (DESIGN.md invariant 2).

A bad policy that starts killing everything must not take a fleet down. The breaker allows at
most `max_kills` stops (kills or suspensions) within any `window_seconds`; the attempt that would
exceed it is refused and *opens* the circuit: the agent drops to monitor mode for the rest of
that policy version (block findings are recorded as `would_block`) and reports a `circuit_open`
agent event. A new policy version closes it again: the fix for a bad policy is a new version.

The state is a plain record so the agent can persist it and survive a restart (a crash-looping
agent must not get a fresh budget of kills on every start).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from endpoint_agent.clock import Clock


class Admission(StrEnum):
    ALLOWED = "allowed"
    TRIPPED = "tripped"  # this attempt opened the circuit (report it once)
    OPEN = "open"  # the circuit was already open


@dataclass(frozen=True)
class CircuitState:
    policy_version: int | None = None
    opened_at: datetime | None = None
    kills: tuple[datetime, ...] = field(default=())

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def to_json(self) -> dict[str, object]:
        return {
            "policy_version": self.policy_version,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "kills": [k.isoformat() for k in self.kills],
        }

    @classmethod
    def from_json(cls, data: object) -> CircuitState:
        """Tolerant: a damaged record yields a closed circuit rather than a crash."""
        if not isinstance(data, dict):
            return cls()
        try:
            version = data.get("policy_version")
            opened = data.get("opened_at")
            kills = data.get("kills") or []
            return cls(
                policy_version=int(version) if version is not None else None,
                opened_at=datetime.fromisoformat(opened) if isinstance(opened, str) else None,
                kills=tuple(datetime.fromisoformat(k) for k in kills if isinstance(k, str)),
            )
        except (TypeError, ValueError):
            return cls()


class CircuitBreaker:
    def __init__(
        self,
        *,
        clock: Clock,
        max_kills: int = 5,
        window_seconds: float = 600.0,
        state: CircuitState | None = None,
    ) -> None:
        if max_kills < 1 or window_seconds <= 0:
            raise ValueError("circuit breaker needs max_kills >= 1 and a positive window")
        self._clock = clock
        self._max = max_kills
        self._window = timedelta(seconds=window_seconds)
        self._state = state or CircuitState()

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def max_kills(self) -> int:
        return self._max

    @property
    def window_seconds(self) -> float:
        return self._window.total_seconds()

    def is_open(self, policy_version: int) -> bool:
        self._follow(policy_version)
        return self._state.is_open

    def kills_in_window(self) -> int:
        return len(self._recent())

    def admit(self, policy_version: int) -> Admission:
        """Ask before each stop; call `record_stop` after one succeeded."""
        self._follow(policy_version)
        if self._state.is_open:
            return Admission.OPEN
        recent = self._recent()
        if len(recent) >= self._max:
            self._state = replace(self._state, opened_at=self._clock.now(), kills=recent)
            return Admission.TRIPPED
        self._state = replace(self._state, kills=recent)
        return Admission.ALLOWED

    def record_stop(self, policy_version: int) -> None:
        self._follow(policy_version)
        self._state = replace(self._state, kills=(*self._recent(), self._clock.now()))

    def _recent(self) -> tuple[datetime, ...]:
        cutoff = self._clock.now() - self._window
        return tuple(k for k in self._state.kills if k > cutoff)

    def _follow(self, policy_version: int) -> None:
        # A new policy version starts closed with an empty window.
        if self._state.policy_version != policy_version:
            self._state = CircuitState(policy_version=policy_version)


__all__ = ["Admission", "CircuitBreaker", "CircuitState"]
