"""Circuit breaker against a bad policy (not against a busy user).

A policy that starts stopping everything must not take a fleet down, but a user who keeps
restarting one blocked client must not be able to switch enforcement off for everyone either.
So the breaker measures *breadth*, not the number of stops:

* Every stop has a `StopTarget`: the rule, the user, and the program -- where the program is
  something that user cannot mint. An unprivileged user's own files (copies, renames, symlinks
  to anything) are one target per rule and user; a system package's binary run under its own
  name is a target of its own; a system account's program (root, daemons) is always a target
  of its own (never collapsed): stopping those is what a bad policy does (the protected
  processes' neighbours) and what no unprivileged user can cause.
* Stopping a target already stopped in the window is always admitted: that is enforcement
  working, however often it happens.
* A stop that would take the number of distinct targets in the window past `max_kills`
  is refused and *opens* the circuit: the agent drops to monitor mode (block findings are
  recorded as `would_block`) and reports `circuit_open` with the targets that tripped it.
* The circuit *closes* again `window_seconds` after it opened (also across restarts, from the
  persisted `opened_at`), or when a new policy version arrives, and reports `circuit_closed`.

Transitions are collected as agent events (`take_transitions()`); the caller records them
with the state (`state.to_json()`), so a crash-looping agent keeps its window and its budget.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from endpoint_agent.clock import Clock
from endpoint_agent.types import ProcessInfo
from endpoint_contract.timestamps import iso_utc

logger = logging.getLogger(__name__)

# Accounts below this are system accounts (login.defs UID_MIN on Linux; 501 on macOS).
FIRST_USER_UID = 501 if sys.platform == "darwin" else 1000
NOBODY_UIDS = frozenset({65534, 4294967294})  # nobody (and nfsnobody): anyone can run as it
_MAX_TARGETS_LISTED = 16
_MAX_STOPS_KEPT = 1000  # for the status's count only; a flood of one target must not grow the state


class Admission(StrEnum):
    ALLOWED = "allowed"
    TRIPPED = "tripped"  # this attempt opened the circuit (reported once)
    OPEN = "open"  # the circuit was already open


@dataclass(frozen=True, slots=True)
class StopTarget:
    """What a stop counts as: (rule, user, program) with the program only where a user cannot forge it."""

    rule_id: str
    uid: int | None
    program: str  # "" for "whatever this user runs from their own files"

    @classmethod
    def of(cls, rule_id: str, process: ProcessInfo) -> StopTarget:
        uid = process.uid
        program = process.exe or process.name
        if uid is None or (uid < FIRST_USER_UID and uid not in NOBODY_UIDS):
            return cls(rule_id, uid, program)  # protected-adjacent: a system account's program
        exe = process.exe or ""
        if process.package and _basename(exe) == process.name:
            return cls(rule_id, uid, exe)  # an installed program, under its own name
        return cls(rule_id, uid, "")  # the user's own files: one target however many copies

    @property
    def key(self) -> tuple[str, int | None, str]:
        return (self.rule_id, self.uid, self.program)

    def to_json(self) -> dict[str, object]:
        program = self.program or None
        return {"rule_id": self.rule_id, "uid": self.uid, "program": program}


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CircuitState:
    policy_version: int | None = None
    opened_at: datetime | None = None
    # Distinct targets stopped, with when each was last stopped (bounded: the circuit opens
    # before there are more than max_kills of them in a window).
    targets: tuple[tuple[StopTarget, datetime], ...] = field(default=())
    stops: tuple[datetime, ...] = field(default=())  # every stop in the window, for status

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def to_json(self) -> dict[str, object]:
        return {
            "policy_version": self.policy_version,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "targets": [{**t.to_json(), "at": at.isoformat()} for t, at in self.targets],
            "stops": [s.isoformat() for s in self.stops],
        }

    @classmethod
    def from_json(cls, data: object) -> CircuitState:
        """Tolerant: a damaged record yields a closed circuit rather than a crash."""
        if not isinstance(data, dict):
            return cls()
        try:
            version = data.get("policy_version")
            opened = data.get("opened_at")
            targets = []
            for t in data.get("targets") or []:
                uid = t.get("uid")
                target = StopTarget(
                    str(t["rule_id"]), int(uid) if uid is not None else None, str(t.get("program") or "")
                )
                targets.append((target, datetime.fromisoformat(t["at"])))
            return cls(
                policy_version=int(version) if version is not None else None,
                opened_at=datetime.fromisoformat(opened) if isinstance(opened, str) else None,
                targets=tuple(targets),
                stops=tuple(datetime.fromisoformat(s) for s in data.get("stops") or [] if isinstance(s, str)),
            )
        except (TypeError, ValueError, KeyError, AttributeError):
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
        self._transitions: list[dict[str, object]] = []
        now = clock.now()
        if self._state.opened_at is not None and self._state.opened_at > now:
            # Opened "in the future" (the clock was set back): the window counts from now.
            self._state = replace(self._state, opened_at=now)

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
        cutoff = self._clock.now() - self._window
        return sum(1 for s in self._state.stops if s > cutoff)

    def breadth(self) -> int:
        return len(self._recent_targets())

    def admit(self, policy_version: int, target: StopTarget) -> Admission:
        """Ask before each stop; call `record_stop` after one succeeded."""
        self._follow(policy_version)
        if self._state.is_open:
            return Admission.OPEN
        recent = self._recent_targets()
        if any(t.key == target.key for t, _ in recent):
            return Admission.ALLOWED  # the same target again: enforcement working
        if len(recent) + 1 > self._max:
            self._open(policy_version, recent, target)
            return Admission.TRIPPED
        return Admission.ALLOWED

    def record_stop(self, policy_version: int, target: StopTarget) -> None:
        self._follow(policy_version)
        now = self._clock.now()
        targets = [(t, at) for t, at in self._recent_targets() if t.key != target.key]
        cutoff = now - self._window
        stops = tuple(s for s in self._state.stops if s > cutoff)[-(_MAX_STOPS_KEPT - 1) :]
        self._state = replace(self._state, targets=(*targets, (target, now)), stops=(*stops, now))

    def take_transitions(self) -> list[dict[str, object]]:
        """Agent events (`type` + `detail`, the wire shape): openings and closings since the last call."""
        out, self._transitions = self._transitions, []
        return out

    # -- transitions -----------------------------------------------------------------------

    def _open(self, version: int, recent: list[tuple[StopTarget, datetime]], refused: StopTarget) -> None:
        now = self._clock.now()
        self._state = replace(self._state, opened_at=now, targets=tuple(recent))
        breadth = len(recent) + 1
        reason = (
            f"stopping {breadth} distinct targets (program, user and rule) "
            f"within {self.window_seconds:g}s exceeds {self._max}; "
            f"monitor mode for policy version {version} until {iso_utc(now + self._window)}"
        )
        logger.error("circuit breaker OPEN: %s", reason)
        listed = [t.to_json() for t, _ in recent[-_MAX_TARGETS_LISTED:]] + [refused.to_json()]
        self._transitions.append(
            {
                "type": "circuit_open",
                "policy_version": version,
                "detail": {
                    "reason": reason,
                    "max_kills": self._max,
                    "window_seconds": self.window_seconds,
                    "breadth": breadth,
                    "stops_in_window": self.kills_in_window(),
                    "targets": listed,
                    "opened_at": iso_utc(now),
                    "closes_at": iso_utc(now + self._window),
                },
            }
        )

    def _close(self, version: int | None, reason: str) -> None:
        opened = self._state.opened_at
        logger.warning("circuit breaker closed: %s", reason)
        self._transitions.append(
            {
                "type": "circuit_closed",
                "policy_version": version,
                "detail": {
                    "reason": reason,
                    "opened_at": iso_utc(opened) if opened else None,
                    "closed_at": iso_utc(self._clock.now()),
                },
            }
        )

    def _follow(self, policy_version: int) -> None:
        state = self._state
        if state.policy_version != policy_version:
            # A new policy version starts closed with an empty window.
            if state.is_open:
                self._close(state.policy_version, f"policy version {policy_version} replaced the tripped one")
            self._state = CircuitState(policy_version=policy_version)
            return
        if state.opened_at is not None and self._clock.now() - state.opened_at >= self._window:
            self._close(policy_version, f"{self.window_seconds:g}s passed since it opened")
            self._state = CircuitState(policy_version=policy_version)  # a fresh window

    def _recent_targets(self) -> list[tuple[StopTarget, datetime]]:
        cutoff = self._clock.now() - self._window
        return [(t, at) for t, at in self._state.targets if at > cutoff]


__all__ = ["Admission", "CircuitBreaker", "CircuitState", "StopTarget"]
