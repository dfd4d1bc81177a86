"""The report job: rounds of upload + heartbeat on a schedule, backoff on failures (fake clock)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from endpoint_agent.errors import ServerRejected, ServerUnavailable
from endpoint_agent.report.backoff import ReportSchedule
from endpoint_agent.report.heartbeat import Heartbeat, counters
from endpoint_agent.report.job import ReportJob
from endpoint_agent.report.store import NewEvent, StoreLimits, ViolationStore
from endpoint_agent.report.uploader import Uploader
from tests.support.doubles import FakeClock
from tests.support.fake_server import FakeServer

T0 = datetime(2030, 1, 2, tzinfo=UTC)


def violation() -> NewEvent:
    event_id = str(uuid.uuid4())
    payload = {
        "event_id": event_id,
        "rule_id": "p2p",
        "category": "p2p",
        "action": "reported",
        "pid": 1,
        "process_name": "x",
        "exe": None,
        "username": None,
        "reason": "r",
        "detected_at": "2030-01-02T00:00:00Z",
        "policy_version": 1,
    }
    return NewEvent(event_id, "violation", T0, payload)


class Rig:
    def __init__(self, store: ViolationStore) -> None:
        self.clock = FakeClock(T0)
        self.server = FakeServer()
        self.store = store
        self.schedule = ReportSchedule(60, clock=self.clock, rng=random.Random(5), first_within=0)
        self.uploader = Uploader(store, self.server, clock=self.clock)
        self.job = ReportJob(
            self.uploader, self.server, heartbeat=self.beat, schedule=self.schedule, clock=self.clock
        )

    def beat(self) -> Heartbeat:
        c = self.store.counts()
        return Heartbeat(
            agent_version="0.1.0", counters=counters(queue_pending=c.pending, dropped_events=c.dropped)
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with ViolationStore.open(tmp_path / "v.sqlite3", StoreLimits(min_free_bytes=0)) as store:
        yield Rig(store)


def test_a_round_uploads_then_sends_a_heartbeat(rig: Rig) -> None:
    rig.store.append([violation() for _ in range(3)])
    outcome = rig.job.run()
    assert outcome is not None and outcome.ok and outcome.upload and outcome.upload.acked == 3
    assert len(rig.server.stored) == 3
    assert rig.server.heartbeats == [
        {"agent_version": "0.1.0", "counters": {"queue_pending": 0, "dropped_events": 0}}
    ]
    assert rig.job.run() is None  # not due again before the interval
    rig.clock.advance(66)
    assert rig.job.run() is not None and len(rig.server.heartbeats) == 2
    assert rig.job.status()["last_error"] is None


def test_server_down_backs_off_keeps_events_and_recovers(rig: Rig) -> None:
    rig.store.append([violation() for _ in range(4)])
    rig.server.fail_next(ServerUnavailable("connection refused"), ServerUnavailable("connection refused"))
    first = rig.job.run()
    assert first is not None and not first.ok and first.retry_in is not None
    assert first.error == "upload: connection refused"
    assert rig.store.counts().pending == 4 and rig.server.heartbeats == []
    requests = len(rig.server.requests)
    assert first.retry_in > 0 and rig.job.run() is None  # backing off: no request
    assert len(rig.server.requests) == requests
    rig.clock.advance(first.retry_in + 0.001)
    second = rig.job.run()
    assert second is not None and not second.ok and rig.schedule.failures == 2
    assert len(rig.server.requests) >= requests + 1
    assert second.retry_in is not None
    rig.clock.advance(second.retry_in + 0.001)
    third = rig.job.run()
    assert third is not None and third.ok and rig.schedule.failures == 0
    assert len(rig.server.stored) == 4 and rig.store.counts().pending == 0


def test_retry_after_is_honoured(rig: Rig) -> None:
    rig.server.fail_next(ServerUnavailable("429 too many requests", retry_after=30))
    outcome = rig.job.run()
    assert outcome is not None and outcome.retry_in is not None and outcome.retry_in >= 30
    rig.clock.advance(29.9)
    assert rig.job.run() is None
    rig.clock.advance(outcome.retry_in - 29.9)
    assert rig.job.run() is not None


def test_a_failed_heartbeat_fails_the_round_after_the_upload(rig: Rig) -> None:
    rig.store.append([violation()])
    real = rig.server.post_heartbeat

    def refuse(body: object) -> None:
        raise ServerRejected("node key not valid", 401)

    rig.server.post_heartbeat = refuse  # type: ignore[assignment,method-assign]
    outcome = rig.job.run()
    assert outcome is not None and not outcome.ok
    assert outcome.error == "heartbeat: HTTP 401: node key not valid"
    assert outcome.upload is not None and outcome.upload.acked == 1  # the upload itself went through
    rig.server.post_heartbeat = real  # type: ignore[method-assign]
    assert rig.job.run(force=True) is not None and rig.server.heartbeats
