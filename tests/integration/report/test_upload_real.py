"""The uploader and heartbeat through the real HTTP client against the real server (uvicorn, SQLite)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.clock import SystemClock
from endpoint_agent.errors import ServerError
from endpoint_agent.report.backoff import ReportSchedule
from endpoint_agent.report.heartbeat import Heartbeat, counters
from endpoint_agent.report.job import ReportJob
from endpoint_agent.report.store import NewEvent, StoreLimits, ViolationStore
from endpoint_agent.report.uploader import Uploader
from endpoint_agent.sync.client import HttpServerClient
from endpoint_agent.sync.identity import EnrollmentFile
from endpoint_contract.timestamps import iso_utc
from tests.support.server import LiveServer, live_server

__all__ = ["live_server"]


class Recording:
    """Delegates to the real client and remembers every refusal (a 413 would mean a bad byte budget)."""

    def __init__(self, client: HttpServerClient) -> None:
        self.client = client
        self.errors: list[ServerError] = []
        self.requests = 0

    def post_events(self, events: Sequence[str]) -> list[str]:
        self.requests += 1
        try:
            return self.client.post_events(events)
        except ServerError as exc:
            self.errors.append(exc)
            raise

    def post_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        self.client.post_heartbeat(heartbeat)


@pytest.fixture
def client(live_server: LiveServer, tmp_path: Path) -> Iterator[HttpServerClient]:
    state = tmp_path / "agent"
    state.mkdir()
    with HttpServerClient(
        live_server.base_url,
        enrollment=EnrollmentFile(state),
        enroll_secret=live_server.enroll_secret,
        machine_id=lambda: "machine-" + uuid.uuid4().hex,
        hostname="ws-upload",
    ) as c:
        yield c


def violation(n: int, reason: str = "matched") -> NewEvent:
    event_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    payload = {
        "event_id": event_id,
        "rule_id": "p2p-standin",
        "category": "p2p",
        "action": "killed",
        "pid": 1000 + n,
        "process_name": f"qbittörrent-{n}",
        "exe": "/opt/qbittörrent",
        "username": "alice",
        "reason": reason,
        "detected_at": iso_utc(now),
        "policy_version": 1,
    }
    return NewEvent(event_id, "violation", now, payload)


def all_items(server: LiveServer, path: str, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    with server.reader() as c:
        while True:
            query = {**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            body = c.get(path, params=query).json()
            items += body["items"]
            cursor = body["next_cursor"]
            if not cursor:
                return items


def test_a_large_backlog_arrives_once_in_full_batches(
    live_server: LiveServer, client: HttpServerClient, tmp_path: Path
) -> None:
    events = [violation(i) for i in range(1203)]
    with ViolationStore.open(tmp_path / "v.sqlite3", StoreLimits(min_free_bytes=0)) as store:
        store.append(events)
        sink = Recording(client)
        result = Uploader(store, sink, clock=SystemClock()).upload()
        assert (result.acked, result.requests, sink.errors) == (1203, 3, [])
        assert store.counts().pending == 0
    stored = all_items(live_server, "/violations")
    assert sorted(v["event_id"] for v in stored) == sorted(e.event_id for e in events)
    assert {v["hostname"] for v in stored} == {"ws-upload"}
    assert stored[0]["process_name"].startswith("qbittörrent-")


def test_bodies_near_the_limit_are_never_refused(
    live_server: LiveServer, client: HttpServerClient, tmp_path: Path
) -> None:
    # 8000 non-ASCII characters: 16 KB of UTF-8, 48 KB once the client escapes them.
    events = [violation(i, reason="é" * 8000) for i in range(60)]
    with ViolationStore.open(tmp_path / "v.sqlite3", StoreLimits(min_free_bytes=0)) as store:
        store.append(events)
        sink = Recording(client)
        result = Uploader(store, sink, clock=SystemClock()).upload()
    assert sink.errors == [] and result.rejected == 0
    assert result.acked == 60 and result.requests >= 3
    assert len(all_items(live_server, "/violations")) == 60


def test_resending_after_a_lost_answer_stores_each_event_once(
    live_server: LiveServer, client: HttpServerClient, tmp_path: Path
) -> None:
    events = [violation(i) for i in range(20)]
    client.post_events([json.dumps({**e.payload, "kind": "violation"}) for e in events[:10]])  # answer "lost"
    with ViolationStore.open(tmp_path / "v.sqlite3", StoreLimits(min_free_bytes=0)) as store:
        store.append(events)
        assert Uploader(store, client, clock=SystemClock()).upload().acked == 20
    stored = [v["event_id"] for v in all_items(live_server, "/violations")]
    assert sorted(stored) == sorted(e.event_id for e in events)


def test_drops_and_the_heartbeat_reach_the_server(
    live_server: LiveServer, client: HttpServerClient, tmp_path: Path
) -> None:
    limits = StoreLimits(max_events=5, min_free_bytes=0)
    with ViolationStore.open(tmp_path / "v.sqlite3", limits) as store:
        store.append([violation(i) for i in range(12)])
        clock = SystemClock()
        uploader = Uploader(store, client, clock=clock, limits=limits)
        scan_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

        def beat() -> Heartbeat:
            return Heartbeat(
                agent_version="9.9.9",
                policy_version=4,
                mode="monitor",
                last_scan_at=scan_at,
                circuit_state="closed",
                counters=counters(scans=3, dropped_events=uploader.dropped_total()),
            )

        schedule = ReportSchedule(60, clock=clock, rng=random.Random(1), first_within=0)
        outcome = ReportJob(uploader, client, heartbeat=beat, schedule=schedule, clock=clock).run()
        assert outcome is not None and outcome.ok, outcome
    [report] = all_items(live_server, "/agent-events", type="events_dropped")
    assert report["count"] == 7 and report["hostname"] == "ws-upload"
    assert len(all_items(live_server, "/violations")) == 5
    with live_server.reader() as c:
        [host] = c.get("/hosts").json()["items"]
    assert host["agent_version"] == "9.9.9" and host["policy_version"] == 4 and host["mode"] == "monitor"
    assert host["counters"] == {"scans": 3, "dropped_events": 7}
    assert host["last_scan_at"].startswith("2030-01-02T03:04:05")
    assert host["stale"] is False
