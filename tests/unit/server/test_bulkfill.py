"""bench/bulkfill.py leaves what uploads leave: contract-shaped rows, consistent rollups, every index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bench.bulkfill import fill
from endpoint_contract.events import AgentEvent, Violation
from server_stub.store import EventFilter, Store
from server_stub.store.rollup import rebuild
from server_stub.store.tables import events, host_daily, hosts, violation_daily, violation_hourly

NOW = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
ROLLUPS = (violation_daily, violation_hourly, host_daily)


def _indexes(store: Store) -> set[str]:
    """The events table's index names from the catalog: reflection skips SQLite's expression indexes."""
    if store.engine.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE tablename = 'events'"
    with store.engine.connect() as conn:
        return set(conn.execute(sa.text(query)).scalars())


def _rollups(store: Store) -> dict[str, set[tuple[object, ...]]]:
    """Every rollup row; stop seconds to the millisecond (SQLite's julianday is not exact)."""
    with store.engine.connect() as conn:
        return {
            t.name: {
                tuple(round(v, 3) if isinstance(v, float) else v for v in r)
                for r in conn.execute(sa.select(t))
            }
            for t in ROLLUPS
        }


def test_bulk_fill_is_what_uploads_leave(store: Store) -> None:
    before = _indexes(store)
    filled = fill(store.engine, hosts=40, violations=3000, agent_events=50, now=NOW, days=3)
    # dropped for the load, all built again (the expression index too)
    assert _indexes(store) == before and "ix_events_kind_day_id" in before
    assert len(filled.host_ids) == 40 and filled.violations == 3000
    with store.engine.connect() as conn:
        kinds = dict(conn.execute(sa.select(events.c.kind, sa.func.count()).group_by(events.c.kind)).all())
        rows = conn.execute(
            sa.select(events, hosts.c.hostname).join(hosts).order_by(events.c.id)
        ).all()  # fmt: skip
    assert kinds == {"violation": 3000, "agent": 50}
    detected = [r.detected_at for r in rows]
    assert detected == sorted(detected)  # ids follow arrival, as on a real server
    assert NOW - timedelta(days=3) <= detected[0] and detected[-1] <= NOW
    for r in rows:
        model = Violation if r.kind == "violation" else AgentEvent
        parsed = model.model_validate(r.data)  # the contract accepts every stored object as is
        assert {**parsed.to_json(), "host_id": r.host_id, "hostname": r.hostname} == r.data
        assert parsed.detected_at == r.detected_at
        if isinstance(parsed, Violation):
            assert (r.rule_id, r.category, r.action, r.severity) == (
                parsed.rule_id, parsed.category, parsed.action.value, parsed.severity.value,
            )  # fmt: skip
            assert r.first_seen == parsed.first_seen
    filled_rollups = _rollups(store)
    with store.engine.begin() as conn:
        rebuild(conn)
    assert _rollups(store) == filled_rollups
    summary = store.stats.summary(EventFilter())
    assert summary.total == 3000 and 0 < summary.total - summary.open < 3000
    noisy = set(filled.host_ids[:4])
    assert sum(c.count for c in summary.by_host if c.key in noisy) > 1500  # a tenth sends most
