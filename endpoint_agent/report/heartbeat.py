"""The heartbeat: what this agent is doing, posted to `POST /api/v1/heartbeat` every upload interval.

    beat = Heartbeat(agent_version="0.1.0", policy_version=3, mode="enforce", counters={"scans": 120})
    sink.post_heartbeat(beat.to_json())

The server keeps the latest one per host (`GET /api/v1/hosts`): agent version, active policy version
and effective mode, last scan time, circuit breaker state and counters (scans, findings, kills,
dropped_events, policy_rejections, ...). A host whose heartbeats stop is marked stale there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from endpoint_contract.timestamps import iso_utc

# The server's limits (API.md): up to 64 counters, names [A-Za-z0-9_.:-]{1,64}, integers >= 0.
_COUNTER_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_COUNTERS = 64

COUNTER_NAMES = (
    "scans",
    "scan_errors",
    "findings",
    "kills",
    "dropped_events",
    "rejected_events",
    "queue_pending",
    "policy_rejections",
)


class HeartbeatSink(Protocol):
    def post_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        """POST one heartbeat. Raises ServerUnavailable (temporary) or ServerRejected."""
        ...


@dataclass(frozen=True)
class Heartbeat:
    agent_version: str
    policy_version: int | None = None
    mode: str | None = None  # the effective mode: "monitor" while break-glass or the circuit breaker says so
    last_scan_at: datetime | None = None
    circuit_state: str | None = None  # "open" | "closed"
    counters: Mapping[str, int] = field(default_factory=dict)
    mode_reason: str | None = None  # why this mode: "break-glass file present", "policy mode is monitor", ...

    def __post_init__(self) -> None:
        if not self.agent_version:
            raise ValueError("a heartbeat needs the agent version")
        if len(self.counters) > MAX_COUNTERS:
            raise ValueError(f"at most {MAX_COUNTERS} counters")
        for name, value in self.counters.items():
            if not _COUNTER_NAME.match(name):
                raise ValueError(f"counter name {name!r} is not [A-Za-z0-9_.:-]{{1,64}}")
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"counter {name} must be an integer >= 0, got {value!r}")
        if self.last_scan_at is not None and self.last_scan_at.tzinfo is None:
            raise ValueError("last_scan_at must be timezone-aware")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agent_version": self.agent_version, "counters": dict(self.counters)}
        if self.policy_version is not None:
            out["policy_version"] = self.policy_version
        if self.mode is not None:
            out["mode"] = self.mode
        if self.last_scan_at is not None:
            out["last_scan_at"] = iso_utc(self.last_scan_at)
        if self.circuit_state is not None:
            out["circuit_state"] = self.circuit_state
        if self.mode_reason is not None:
            out["mode_reason"] = self.mode_reason[:200]
        return out


def counters(**values: int | None) -> dict[str, int]:
    """Counter values as the server takes them: missing ones left out, negative ones clamped to 0."""
    return {name: max(0, int(value)) for name, value in values.items() if value is not None}


__all__ = ["COUNTER_NAMES", "MAX_COUNTERS", "Heartbeat", "HeartbeatSink", "counters"]
