"""A batch stored in one pass (store/events.py received_rows + insert_batch, store/bulk.py), on
SQLite and PostgreSQL: exactly once, in upload order, as the text it was validated from, with
the host's identity as the server knows it, and the rollups counting each violation once."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from endpoint_agent.errors import StoreError
from endpoint_contract.events import Violation, batch_body
from server_stub.batch import parse_batch
from server_stub.store import EventFilter, Store, event_insert, rollup
from server_stub.store.events import received_rows
from server_stub.store.tables import events, host_daily, hosts, violation_daily, violation_hourly

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def text(rule: str = "p2p", when: datetime = T0, **over: Any) -> str:
    return Violation.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "detected_at": when,
            "first_seen": when - timedelta(seconds=30),
            "rule_id": rule,
            "category": "p2p",
            "action": "killed",
            "pid": 42,
            "process_name": "qbittorrent",
            "reason": "matched",
            "policy_version": 1,
            "hostname": "ws-1",
            **over,
        }
    ).to_json_text()


def upload(store: Store, host_id: str, texts: list[str], hostname: str = "ws-1") -> list[str]:
    """What the route does; returns the event ids stored now."""
    rows = received_rows(parse_batch(batch_body(texts)), host_id, hostname)
    return [r.event_id for r in store.events.insert_batch(host_id, rows, T0)]


def ids(t: str) -> str:
    return str(json.loads(t)["event_id"])


def rollup_total(store: Store) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.n), 0))).scalar_one())
            for t in (violation_daily, violation_hourly, host_daily)
        )


def test_each_event_is_stored_once_whatever_the_retries(store: Store) -> None:
    h = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    a, b, c, d = (text(rule=f"r{i}", when=T0 + timedelta(minutes=i)) for i in range(4))
    assert upload(store, h, [a, b, a, b]) == [ids(a), ids(b)]  # duplicates inside one batch
    assert upload(store, h, [a, b]) == []  # the same batch retried
    assert upload(store, h, [b, c, d, c]) == [ids(c), ids(d)]  # overlapping batches
    items, _ = store.events.page("violation", EventFilter(), after_id=0, limit=10)
    assert [i.data["event_id"] for i in items] == [ids(t) for t in (a, b, c, d)]  # upload order
    assert rollup_total(store) == (4, 4, 4)
    other = store.hosts.enroll(machine_id="m2", hostname="ws-2", node_key_hash="b" * 64, now=T0)
    assert upload(store, other, [a], hostname="ws-2") == [ids(a)]  # an id is per host
    assert rollup_total(store) == (5, 5, 5)


def test_the_text_is_stored_as_sent_with_the_servers_identity_added(store: Store) -> None:
    h = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    sent = text()
    upload(store, h, [sent])
    with store.engine.connect() as conn:
        raw = conn.execute(sa.select(sa.cast(events.c.data, sa.Text))).scalar_one()
    assert raw == sent[:-1] + f',"host_id":"{h}"}}'  # no re-encoding: the agent's bytes, one key added
    (item,), _ = store.events.page("violation", EventFilter(), after_id=0, limit=10)
    reference = event_insert(Violation.model_validate_json(sent), h, "ws-1").data
    assert item.data == reference  # what readers get is what the decoded path stored


def test_claims_about_the_host_are_replaced(store: Store) -> None:
    h = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    forged = text(host_id="someone-else", hostname="ceo-laptop")
    stale = text(hostname="old-name")
    unnamed = json.dumps({k: v for k, v in json.loads(text()).items() if k != "hostname"})
    upload(store, h, [forged, stale, unnamed])
    items, _ = store.events.page("violation", EventFilter(), after_id=0, limit=10)
    assert [(i.data["host_id"], i.data["hostname"]) for i in items] == [(h, "ws-1")] * 3
    assert items[0].data["event_id"] == ids(forged)


def test_agent_events_and_violations_share_one_batch(store: Store) -> None:
    h = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    agent = json.dumps(
        {"kind": "agent", "event_id": str(uuid.uuid4()), "detected_at": "2030-05-01T12:00:00Z",
         "type": "events_dropped", "detail": {"queue": "full"}, "count": 3}
    )  # fmt: skip
    upload(store, h, [text(), agent, text(action="reported")])
    got, _ = store.events.page("agent", EventFilter(), after_id=0, limit=10)
    assert [(g.data["type"], g.data["count"], g.data["host_id"]) for g in got] == [("events_dropped", 3, h)]
    assert rollup_total(store) == (2, 2, 2)


def test_events_of_a_host_that_does_not_exist_are_refused_and_nothing_is_stored(store: Store) -> None:
    # PostgreSQL checks the host once per batch (no foreign key since migration 15), SQLite by its key.
    store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    with pytest.raises(StoreError, match="storing events"):
        upload(store, "no-such-host", [text(), text()])
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 0
    assert rollup_total(store) == (0, 0, 0)


def test_postgresql_checks_the_host_per_batch_sqlite_per_row(store: Store) -> None:
    # Migration 15: PostgreSQL's per-row foreign key check cost about a seventh of its CPU per event.
    referred = [k["referred_table"] for k in sa.inspect(store.engine).get_foreign_keys("events")]
    assert referred == ([] if store.engine.dialect.name == "postgresql" else ["hosts"])


@pytest.mark.postgres
def test_an_uploading_host_cannot_be_deleted_before_its_events_commit(pg_store: Store) -> None:
    """What the foreign key held per row, the upload holds once: its host's row (FOR KEY SHARE)."""
    h = pg_store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    with pg_store.engine.begin() as uploading:
        assert rollup.lock_uploaders(uploading, [h]) == {h}
        with pg_store.engine.connect() as admin:
            admin.exec_driver_sql("SET lock_timeout = '100ms'")
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                admin.execute(sa.delete(hosts).where(hosts.c.host_id == h))
            admin.rollback()
            # Writes of the host's other columns (last_seen, written behind) do not wait.
            admin.execute(sa.update(hosts).where(hosts.c.host_id == h).values(last_seen=T0))
            admin.commit()
        assert rollup.lock_uploaders(uploading, ["no-such-host"]) == set()


def test_the_upload_statement_is_parsed_once_by_the_driver() -> None:
    # psycopg caches its parse of a statement only up to a length; longer ones are parsed per upload.
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    from server_stub.store import bulk

    assert len(bulk._pg_sql(rollup.COUNT_NEW)) <= MAX_CACHED_STATEMENT_LENGTH
