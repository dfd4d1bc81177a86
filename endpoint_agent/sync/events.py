"""Agent events of policy sync (`policy_rejected`, `policy_unsafe`, `policy_expired`) into the outbox.

They go to the local store as kind "agent" with the wire shape of server_stub/API.md
(`type`, `detail`), and the uploader sends them like violations. Recording never raises:
a full disk must not stop the agent from keeping its last good policy.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Protocol

from endpoint_agent.clock import Clock
from endpoint_agent.errors import StoreError
from endpoint_agent.report.store import NewEvent, ViolationStore
from endpoint_contract.events import AgentEvent

logger = logging.getLogger(__name__)


class AgentEventSink(Protocol):
    def record(self, type_: str, detail: Mapping[str, object]) -> None: ...


def agent_event(type_: str, detail: Mapping[str, object], clock: Clock) -> NewEvent:
    now = clock.now()
    event = AgentEvent(event_id=str(uuid.uuid4()), detected_at=now, type=type_, detail=dict(detail))
    return NewEvent(event.event_id, "agent", now, event.to_json())


class StoreEventSink:
    def __init__(self, store: ViolationStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def record(self, type_: str, detail: Mapping[str, object]) -> None:
        try:
            self._store.append([agent_event(type_, detail, self._clock)])
        except StoreError as exc:
            logger.error("could not record agent event %s: %s", type_, exc)


__all__ = ["AgentEventSink", "StoreEventSink", "agent_event"]
