"""The heartbeat (endpoint_contract/heartbeat.py): what this agent is doing, posted to
`POST /api/v1/heartbeat` every upload interval.

    beat = Heartbeat(agent_version="0.1.0", policy_version=3, mode="enforce", counters={"scans": 120})
    sink.post_heartbeat(beat.to_json())

The server keeps the latest one per host (`GET /api/v1/hosts`): agent version, active policy version
and effective mode, last scan time, circuit breaker state and counters (scans, findings, kills,
dropped_events, policy_rejections, ...). A host whose heartbeats stop is marked stale there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from endpoint_contract.heartbeat import MAX_COUNTERS, Heartbeat

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
class AgentPulse:
    """What the scan loop reports about itself (the agent's `pulse()`), for the heartbeat."""

    policy_version: int | None = None
    mode: str | None = None
    mode_reason: str | None = None
    last_scan_at: datetime | None = None
    circuit_open: bool = False
    scans: int = 0
    scan_errors: int = 0
    violations: int = 0  # new violations recorded since start
    stops: int = 0


def counters(**values: int | None) -> dict[str, int]:
    """Counter values as the server takes them: missing ones left out, negative ones clamped to 0."""
    return {name: max(0, int(value)) for name, value in values.items() if value is not None}


__all__ = ["COUNTER_NAMES", "MAX_COUNTERS", "AgentPulse", "Heartbeat", "HeartbeatSink", "counters"]
