"""The local outbox on real SQLite files: durability, dedup keys, bounds, acks, errors."""

from __future__ import annotations

import sqlite3
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from endpoint_agent.decide import SeenEntry
from endpoint_agent.errors import StoreError
from endpoint_agent.report.store import NewEvent, StoreCorrupt, StoreLimits, ViolationStore
from endpoint_agent.types import Outcome

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def event(n: int = 0, *, kind: str = "violation", pad: int = 0) -> NewEvent:
    event_id = str(uuid.uuid4())
    payload: dict[str, object] = {"event_id": event_id, "rule_id": f"rule-{n}", "pad": "x" * pad}
    return NewEvent(event_id, kind, T0 + timedelta(seconds=n), payload)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ViolationStore]:
    with ViolationStore.open(tmp_path / "state" / "violations.sqlite3") as s:
        yield s


def test_created_private_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "v.sqlite3"
    ViolationStore.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_committed_events_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    events = [event(i) for i in range(3)]
    with ViolationStore.open(path) as s:
        s.commit_tick(events)
    with ViolationStore.open(path) as s:
        stored = s.events()
    assert [e.event_id for e in stored] == [e.event_id for e in events]
    assert stored[0].payload == events[0].payload
    assert stored[0].kind == "violation" and stored[0].uploaded_at is None


def test_pending_and_ack(store: ViolationStore) -> None:
    events = [event(i) for i in range(5)]
    store.append(events)
    batch = store.pending(limit=3)
    assert [e.event_id for e in batch] == [e.event_id for e in events[:3]]
    assert store.ack([e.event_id for e in batch] + ["not-an-id"]) == 3
    assert store.ack([batch[0].event_id]) == 0  # idempotent
    assert [e.event_id for e in store.pending()] == [e.event_id for e in events[3:]]
    counts = store.counts()
    assert (counts.total, counts.pending, counts.uploaded, counts.dropped) == (5, 2, 3, 0)


def test_pending_respects_max_bytes_but_always_returns_one(store: ViolationStore) -> None:
    store.append([event(i, pad=1000) for i in range(4)])
    assert len(store.pending(limit=10, max_bytes=2500)) == 2
    assert len(store.pending(limit=10, max_bytes=10)) == 1  # one oversized event must not block the queue


def test_same_event_id_is_stored_once(store: ViolationStore) -> None:
    e = event()
    store.append([e])
    store.append([e])
    assert store.counts().total == 1


def test_payloads_are_append_only(store: ViolationStore) -> None:
    store.append([event()])
    with sqlite3.connect(store.path) as raw, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE events SET payload='{}'")


def test_bounded_by_count_drops_uploaded_first_then_oldest_pending(tmp_path: Path) -> None:
    with ViolationStore.open(tmp_path / "v.sqlite3", StoreLimits(max_events=5, min_free_bytes=0)) as s:
        first = [event(i) for i in range(5)]
        s.append(first)
        s.ack([first[2].event_id])  # uploaded: safe on the server, goes first
        s.append([event(10), event(11)])
        ids = [e.event_id for e in s.events()]
        assert first[2].event_id not in ids
        assert first[0].event_id not in ids  # then the oldest pending one
        assert len(ids) == 5
        assert s.counts().dropped == 1  # only pending events count as dropped
        s.append([event(12)])
        assert s.counts().dropped == 2


def test_bounded_by_bytes(tmp_path: Path) -> None:
    with ViolationStore.open(tmp_path / "v.sqlite3", StoreLimits(max_bytes=5000, min_free_bytes=0)) as s:
        s.append([event(i, pad=1000) for i in range(10)])
        counts = s.counts()
        assert counts.bytes <= 5000
        assert counts.dropped == 10 - counts.total
        assert counts.total >= 4


def test_low_disk_stops_growth(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    with ViolationStore.open(path, StoreLimits(min_free_bytes=0)) as s:
        s.append([event(i) for i in range(3)])
    with ViolationStore.open(path, StoreLimits(min_free_bytes=1 << 62)) as s:  # "disk nearly full"
        newest = event(9)
        s.append([newest])
        ids = [e.event_id for e in s.events()]
        assert len(ids) == 3 and ids[-1] == newest.event_id
        assert s.counts().dropped == 1


def test_seen_entries_round_trip_and_stamp_last_seen_on_the_event(store: ViolationStore) -> None:
    e = event()
    entry = SeenEntry("p2p", 4242, 1234.56789, e.event_id, Outcome.KILLED, 3, T0, T0 + timedelta(seconds=30))
    store.commit_tick([e], seen_upserts=[entry], meta={"circuit": {"open": True}})
    assert store.load_seen() == [entry]
    assert store.events()[0].last_seen == "2024-05-01T12:00:30Z"
    assert store.get_meta("circuit") == {"open": True}
    later = SeenEntry("p2p", 4242, 1234.56789, e.event_id, Outcome.KILLED, 3, T0, T0 + timedelta(seconds=90))
    store.commit_tick(seen_upserts=[later], seen_deletes=[later.key])  # upsert then delete, one transaction
    assert store.load_seen() == []
    assert store.events()[0].last_seen == "2024-05-01T12:01:30Z"  # the event keeps its final last_seen


def test_read_only_view_for_listing(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    assert ViolationStore.open_existing(path) is None
    with ViolationStore.open(path) as writer:
        writer.append([event()])
        with ViolationStore.open_existing(path) as reader:  # type: ignore[union-attr]
            assert reader.counts().total == 1
            with pytest.raises(StoreError, match="read-only"):
                reader.append([event()])


def test_a_corrupt_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt, match="damaged"):
        ViolationStore.open(path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="newer than this agent"):
        ViolationStore.open(path)


def test_an_unusable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        ViolationStore.open(blocker / "v.sqlite3")
