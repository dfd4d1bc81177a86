"""The uploader on a real SQLite outbox against a double of the server (validated by the server's models)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from endpoint_agent.errors import ServerRejected, ServerUnavailable
from endpoint_agent.report.store import NewEvent, SeenEntry, StoreLimits, ViolationStore
from endpoint_agent.report.uploader import MAX_BATCH_BYTES, Uploader, wire_text
from endpoint_agent.types import Connection, Direction, Endpoint, Outcome
from tests.support.contract import CONTRACT_KEYS
from tests.support.doubles import FakeClock
from tests.support.fake_server import FakeServer
from tests.support.violations import sample_violation

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
NO_DISK_CHECK = StoreLimits(min_free_bytes=0)


def violation(n: int = 0, *, reason_pad: int = 0, **changes: object) -> NewEvent:
    conn = Connection(4000 + n, "ipv4", "tcp", Endpoint("127.0.0.1", 6881), None, "LISTEN", Direction.LISTEN)
    v = sample_violation(
        f"p2p-rule-{n}",
        T0 + timedelta(seconds=n),
        pid=4000 + n,
        reason="process name 'qbittorrent' matched 'qbittorrent*'" + "!" * reason_pad,
        connection=conn,
        first_seen=T0,
    )
    payload = {**v.to_json(), **changes}
    return NewEvent(v.event_id, "violation", v.detected_at, payload)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ViolationStore]:
    with ViolationStore.open(tmp_path / "violations.sqlite3", NO_DISK_CHECK) as s:
        yield s


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def make_uploader(store: ViolationStore, server: FakeServer, **kwargs: object) -> Uploader:
    return Uploader(store, server, clock=FakeClock(T0), **kwargs)  # type: ignore[arg-type]


def pending_ids(store: ViolationStore) -> list[str]:
    return [e.event_id for e in store.pending(limit=100_000, max_bytes=1 << 40)]


def test_drains_oldest_first_in_batches_of_at_most_500(store: ViolationStore, server: FakeServer) -> None:
    events = [violation(i) for i in range(1203)]
    store.append(events)
    result = make_uploader(store, server).upload()
    assert [len(r) for r in server.requests] == [500, 500, 203]
    assert server.posted_ids() == [e.event_id for e in events]
    assert (result.acked, result.requests, result.more) == (1203, 3, False)
    assert pending_ids(store) == []
    assert store.counts().uploaded == 1203


def test_request_bodies_stay_within_one_mib(store: ViolationStore, server: FakeServer) -> None:
    store.append([violation(i, reason_pad=5000) for i in range(450)])  # ~2.4 MiB in all
    make_uploader(store, server).upload()
    assert len(server.requests) >= 3
    assert max(server.bodies) <= MAX_BATCH_BYTES
    assert min(server.bodies[:-1]) > 0.95 * MAX_BATCH_BYTES  # full batches, not one event each
    assert len(server.stored) == 450 and pending_ids(store) == []


def test_non_ascii_text_does_not_push_a_body_over_the_limit(
    store: ViolationStore, server: FakeServer
) -> None:
    events = [violation(i, process_name="é" * 3000 + f"-{i}") for i in range(200)]
    store.append(events)  # each about 18 KB once escaped as \u00e9
    make_uploader(store, server).upload()
    assert max(server.bodies) <= MAX_BATCH_BYTES and len(server.requests) >= 4
    assert len(server.stored) == 200


def test_the_wire_event_is_the_stored_text_the_server_takes(
    store: ViolationStore, server: FakeServer
) -> None:
    e = violation(1)
    store.append([e])
    stored = store.events()[0]
    text = wire_text(stored)
    assert text == stored.text  # encoded once, when recorded: sent as stored
    wire = json.loads(text)
    assert wire["kind"] == "violation" and wire["event_id"] == e.event_id
    assert CONTRACT_KEYS | {"connection", "hostname", "os"} <= wire.keys()
    make_uploader(store, server).upload()
    assert server.violations()[0]["connection"]["laddr"] == "127.0.0.1:6881"


def test_last_seen_is_added_to_the_stored_text(store: ViolationStore, server: FakeServer) -> None:
    e = violation(1)
    seen = SeenEntry("p2p-rule-1", 4001, 1.5, e.event_id, Outcome.KILLED, 3, T0, T0 + timedelta(minutes=5))
    store.commit_tick([e], seen_upserts=[seen])
    wire = json.loads(wire_text(store.events()[0]))
    assert wire["last_seen"] == "2030-01-02T03:09:05Z" and wire["first_seen"] == "2030-01-02T03:04:05Z"


def test_a_row_an_older_agent_wrote_is_completed_from_its_columns(
    store: ViolationStore, server: FakeServer
) -> None:
    legacy = {k: v for k, v in violation(2).payload.items() if k not in ("kind", "detected_at")}
    store.append([NewEvent(str(legacy["event_id"]), "violation", T0, legacy)])
    wire = json.loads(wire_text(store.events()[0]))
    assert wire["kind"] == "violation" and wire["detected_at"] == "2030-01-02T03:04:05Z"
    assert make_uploader(store, server).upload().acked == 1


def test_agent_events_recorded_with_an_event_key_are_sent_with_a_type(
    store: ViolationStore, server: FakeServer
) -> None:
    event_id = str(uuid.uuid4())
    body: dict[str, object] = {
        "event_id": event_id,
        "kind": "agent",
        "detected_at": "2030-01-02T03:04:05Z",
        "type": "circuit_open",
        "detail": {"reason": "test"},
    }
    store.append([NewEvent(event_id, "agent", T0, body)])
    make_uploader(store, server).upload()
    [stored] = server.agent_events()
    assert stored["type"] == "circuit_open"


def test_only_acknowledged_events_leave_the_queue(store: ViolationStore, server: FakeServer) -> None:
    events = [violation(i) for i in range(10)]
    store.append(events)
    server.ack_only = 4
    first = make_uploader(store, server).upload()
    assert first.acked >= 4
    # the 6 the server did not acknowledge were retried and are the only ones sent twice
    sent_twice = {i for i in server.posted_ids() if server.posted_ids().count(i) > 1}
    assert sent_twice == {e.event_id for e in events[4:]}
    assert pending_ids(store) == []


def test_server_down_mid_drain_keeps_the_rest_queued(store: ViolationStore, server: FakeServer) -> None:
    events = [violation(i) for i in range(1100)]
    store.append(events)
    uploader = make_uploader(store, server)
    server.fail_at[2] = ServerUnavailable("connection refused")
    with pytest.raises(ServerUnavailable):
        uploader.upload()
    assert len(server.stored) == 500
    assert pending_ids(store) == [e.event_id for e in events[500:]]
    uploader.upload()
    assert len(server.stored) == 1100 and pending_ids(store) == []
    posted = server.posted_ids()
    assert all(posted.count(e.event_id) == 1 for e in events[:500])  # nothing acknowledged was resent
    assert all(posted.count(e.event_id) == 2 for e in events[500:1000])  # the failed batch went again


def test_a_lost_answer_resends_the_batch_and_the_server_keeps_one_copy(
    store: ViolationStore, server: FakeServer
) -> None:
    events = [violation(i) for i in range(7)]
    store.append(events)
    uploader = make_uploader(store, server)
    server.lose_next_answer()
    with pytest.raises(ServerUnavailable):
        uploader.upload()
    assert len(pending_ids(store)) == 7  # not acknowledged, so not removed
    uploader.upload()
    assert sorted(server.stored) == sorted(e.event_id for e in events)
    assert len(server.posted_ids()) == 14


@pytest.mark.parametrize("status", [401, 403, 404, 409])
def test_refusals_that_are_not_about_the_batch_propagate_and_keep_everything(
    store: ViolationStore, server: FakeServer, status: int
) -> None:
    store.append([violation(i) for i in range(3)])
    server.fail_next(ServerRejected("no", status))
    with pytest.raises(ServerRejected):
        make_uploader(store, server).upload()
    assert len(pending_ids(store)) == 3 and server.stored == {}


def test_a_malformed_event_is_isolated_and_set_aside(store: ViolationStore, server: FakeServer) -> None:
    good = [violation(i) for i in range(9)]
    bad = violation(99, action="exploded")  # not an action the server knows
    store.append([*good[:4], bad, *good[4:]])
    uploader = make_uploader(store, server)
    result = uploader.upload()
    assert (result.acked, result.rejected) == (9, 1)
    assert sorted(server.stored) == sorted(e.event_id for e in good)
    assert pending_ids(store) == [bad.event_id]  # kept locally, never acknowledged
    assert uploader.rejected_ids() == {bad.event_id} and uploader.rejected_count() == 1
    requests = len(server.requests)
    later = violation(100)
    store.append([later])
    assert uploader.upload().acked == 1
    assert server.requests[requests:] == [[server.stored[later.event_id]]]  # the bad one is not resent
    # the set-aside list survives a restart
    assert make_uploader(store, server).rejected_ids() == {bad.event_id}


def test_an_event_larger_than_a_batch_is_set_aside_without_sending(
    store: ViolationStore, server: FakeServer
) -> None:
    huge = violation(0, reason_pad=4000)
    store.append([huge, violation(1)])
    uploader = make_uploader(store, server, max_bytes=3000)
    result = uploader.upload()
    assert (result.acked, result.rejected) == (1, 0)
    assert huge.event_id not in server.posted_ids()
    assert uploader.rejected_ids() == {huge.event_id}


def test_a_round_is_bounded_and_says_there_is_more(store: ViolationStore, server: FakeServer) -> None:
    store.append([violation(i) for i in range(25)])
    uploader = make_uploader(store, server, max_events=10, max_requests=2)
    assert uploader.upload().more is True
    assert len(pending_ids(store)) == 5
    assert uploader.upload().more is False
    assert pending_ids(store) == []


def dropping_store(tmp_path: Path, max_events: int = 5) -> ViolationStore:
    limits = StoreLimits(max_events=max_events, min_free_bytes=0)
    return ViolationStore.open(tmp_path / "small.sqlite3", limits)


def test_dropped_events_are_reported_once_with_their_count(tmp_path: Path, server: FakeServer) -> None:
    with dropping_store(tmp_path) as store:
        events = [violation(i) for i in range(8)]
        store.append(events)  # the 3 oldest are dropped
        uploader = Uploader(store, server, clock=FakeClock(T0), limits=StoreLimits(max_events=5))
        uploader.upload()
        assert sorted(e["event_id"] for e in server.violations()) == sorted(e.event_id for e in events[3:])
        [report] = server.agent_events("events_dropped")
        assert report["count"] == 3 and report["detail"]["total_dropped"] == 3
        assert report["detail"]["queue_max_events"] == 5
        uploader.upload()
        assert len(server.agent_events("events_dropped")) == 1  # nothing new, nothing resent

        # while the server is away, the store overflows again: only the new drops are reported
        store.append([violation(i) for i in range(10, 17)])  # 5 uploaded go first, then 2 pending
        uploader.upload()
        counts = [e["count"] for e in server.agent_events("events_dropped")]
        assert counts == [3, 2]
        assert sum(counts) == uploader.dropped_total() == store.counts().dropped


def test_the_drop_report_survives_a_lost_answer_and_a_restart(tmp_path: Path, server: FakeServer) -> None:
    with dropping_store(tmp_path) as store:
        store.append([violation(i) for i in range(9)])
        server.lose_next_answer()
        with pytest.raises(ServerUnavailable):
            Uploader(store, server, clock=FakeClock(T0)).upload()
        first_id = server.requests[0][0]["event_id"]
    with dropping_store(tmp_path) as store:  # the agent restarted
        Uploader(store, server, clock=FakeClock(T0 + timedelta(hours=1))).upload()
    [report] = server.agent_events("events_dropped")
    assert report["event_id"] == first_id and report["count"] == 4
    assert server.posted_ids().count(first_id) == 2


def test_the_store_payload_is_never_rewritten(store: ViolationStore, server: FakeServer) -> None:
    e = violation(0)
    store.append([e])
    make_uploader(store, server).upload()
    assert json.loads(json.dumps(store.events()[0].payload)) == json.loads(json.dumps(e.payload))
    assert store.events()[0].uploaded_at is not None


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Uploader(None, FakeServer(), clock=FakeClock(T0), max_events=501)  # type: ignore[arg-type]
