"""Wire events as an agent uploads them, and the upload itself, for tests against the real server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.support.server import EnrolledHost, LiveServer


def violation(**overrides: Any) -> dict[str, Any]:
    event = {
        "kind": "violation",
        "event_id": str(uuid.uuid4()),
        "detected_at": datetime.now(UTC).isoformat(),
        "rule_id": "p2p-qbittorrent",
        "category": "p2p",
        "action": "killed",
        "pid": 4242,
        "process_name": "qbittorrent",
        "exe": "/usr/bin/qbittorrent",
        "username": "alice",
        "reason": "process name 'qbittorrent' matched 'qbittorrent*' (rule p2p-qbittorrent)",
        "policy_version": 3,
    }
    event.update(overrides)
    return event


def agent_event(type_: str = "events_dropped", **overrides: Any) -> dict[str, Any]:
    event = {
        "kind": "agent",
        "event_id": str(uuid.uuid4()),
        "detected_at": datetime.now(UTC).isoformat(),
        "type": type_,
        "detail": {"queue": "full"},
        "count": 17,
    }
    event.update(overrides)
    return event


def post(server: LiveServer, host: EnrolledHost, events: list[dict[str, Any]]) -> httpx.Response:
    with server.client(host.node_key) as c:
        return c.post("/events", json={"events": events})
