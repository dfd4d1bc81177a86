"""Retention on SQLite and PostgreSQL: only what is older goes, a batch per transaction, never a
violation an export sink has not read, and the daily counts stay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from server_stub.retention import RetentionService
from server_stub.store import Store
from server_stub.store.retention import RetentionRepo
from server_stub.store.rollup import rebuild
from server_stub.store.tables import events, export_cursors, violation_daily

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)


def _fill(store: Store, ages_days: list[float], kind: str = "violation") -> list[int]:
    """One event per age (days before NOW), in this order; returns their ids."""
    host = store.hosts.enroll(
        machine_id=str(uuid.uuid4()), hostname="ws", node_key_hash=uuid.uuid4().hex * 2, now=NOW
    )
    rows = []
    for age in ages_days:
        at = NOW - timedelta(days=age)
        extra = (
            {"rule_id": "r", "category": "c", "action": "killed"} if kind == "violation" else {"type": "t"}
        )
        rows.append(
            {
                "host_id": host,
                "event_id": str(uuid.uuid4()),
                "kind": kind,
                "received_at": NOW,
                "detected_at": at,
            }
            | extra
            | {"data": {"kind": kind}}
        )
    with store.engine.begin() as conn:
        ids = conn.execute(events.insert().returning(events.c.id), rows).scalars().all()
        rebuild(conn)
    return sorted(ids)


def _ages(store: Store) -> list[tuple[str, float]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.kind, events.c.detected_at).order_by(events.c.id)).all()
    return [(r.kind, round((NOW - r.detected_at).total_seconds() / 86400, 3)) for r in rows]


def _daily(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.coalesce(sa.func.sum(violation_daily.c.n), 0))).scalar_one()
        )


def test_only_older_events_go_a_batch_at_a_time_and_daily_counts_stay(store: Store) -> None:
    _fill(store, [45, 31, 29.9, 40, 30.001, 1, 60, 0])
    _fill(store, [90, 2, 35], kind="agent")
    counted = _daily(store)
    repo = store.retention
    assert repo.delete_batch(CUTOFF, export_floor=None, batch=2) == 2
    assert len(_ages(store)) == 9
    while repo.delete_batch(CUTOFF, export_floor=None, batch=2):
        pass
    assert _ages(store) == [
        ("violation", 29.9),
        ("violation", 1.0),
        ("violation", 0.0),
        ("agent", 2.0),
    ]
    assert _daily(store) == counted  # the report still counts the purged days
    assert repo.delete_batch(CUTOFF, export_floor=None) == 0


def test_a_violation_no_export_sink_has_read_is_kept(store: Store) -> None:
    ids = _fill(store, [50, 50, 50, 1])
    _fill(store, [50], kind="agent")
    assert store.exports.lowest_cursor([]) is None
    assert store.exports.lowest_cursor(["never-ran"]) == 0
    with store.engine.begin() as conn:
        conn.execute(
            export_cursors.insert(),
            [
                {"sink": "fast", "last_id": ids[3], "updated_at": NOW},
                {"sink": "slow", "last_id": ids[0], "updated_at": NOW},
            ],
        )
    floor = store.exports.lowest_cursor(["fast", "slow"])
    assert floor == ids[0]
    assert store.exports.lowest_cursor(["fast", "slow", "never-ran"]) == 0
    assert store.retention.delete_batch(CUTOFF, export_floor=floor) == 2  # the read one and the agent event
    with store.engine.connect() as conn:
        left = conn.execute(sa.select(events.c.id).order_by(events.c.id)).scalars().all()
    assert left == ids[1:]


class CountingRepo(RetentionRepo):
    """The real repository, counting its transactions."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.engine)
        self.batches: list[int] = []

    def delete_batch(self, cutoff: datetime, *, export_floor: int | None, batch: int = 1000) -> int:
        done = super().delete_batch(cutoff, export_floor=export_floor, batch=batch)
        self.batches.append(done)
        return done


def test_the_service_purges_everything_expired_in_batches(store: Store) -> None:
    _fill(store, [31 + i / 10 for i in range(23)] + [3])
    repo = CountingRepo(store)
    service = RetentionService(repo, days=30, export_floor=lambda: None, clock=lambda: NOW, batch=5, pause=0)
    assert service.run_once() == 23
    assert repo.batches == [5, 5, 5, 5, 3]
    assert [age for _, age in _ages(store)] == [3.0]
    assert service.run_once() == 0
