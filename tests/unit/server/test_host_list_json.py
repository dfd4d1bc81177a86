"""GET /hosts writes its JSON straight from the listed rows (server_stub/hostlist.py): byte for byte
what the model (server_stub/models.py HostList) writes for the same hosts, on SQLite and
PostgreSQL, for names that need escaping, times with and without a fraction, hosts never seen,
counters of every shape -- and rows stored in forms the plain way does not take (the model's way)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from endpoint_contract.heartbeat import Heartbeat
from server_stub.hostlist import host_list_json
from server_stub.models import HostList
from server_stub.pagination import encode_host_cursor
from server_stub.store import Store
from server_stub.store.hosts import HostFilter, HostRecord, ListedHost
from server_stub.store.tables import hosts
from tests.support.inprocess_server import in_process_server

T0 = datetime(2030, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
CUTOFF = T0 - timedelta(minutes=10)
NAMES = [
    "ws-plain",
    'quote"and\\backslash',
    "tab\tnew\nline\x01ctl\x1f",
    "ünïcødé-wś-日本",
    "emoji-\U0001f600",
    "slash/<script>&amp;",
    "del\x7f-and-\u2028-sep",
    "z" * 200,
]


def _records(store: Store, rows: list[ListedHost]) -> list[HostRecord]:
    """The same hosts as the store's records (datetimes, dicts): what the model is given."""
    by_id = {h.host_id: h for h in store.hosts.list_hosts()}
    return [by_id[row.host_id] for row in rows]


def _model_json(records: list[HostRecord], cursor: str | None, cutoff: datetime = CUTOFF) -> str:
    """What the route wrote before: each host through the model."""
    items = [
        {
            "host_id": h.host_id,
            "hostname": h.hostname,
            "machine_id": h.machine_id,
            "enrolled_at": h.enrolled_at,
            "last_seen": h.last_seen,
            "stale": h.last_seen is None or h.last_seen < cutoff,
            "agent_version": h.agent_version,
            "policy_version": h.policy_version,
            "mode": h.mode,
            "last_scan_at": h.last_scan_at,
            "heartbeat_at": h.heartbeat_at,
            "counters": h.counters,
            "circuit_state": h.circuit_state,
        }
        for h in records
    ]
    return HostList.model_validate({"items": items, "next_cursor": cursor}).model_dump_json()


def _fill(store: Store) -> list[str]:
    ids = []
    for i, name in enumerate(NAMES):
        at = T0 - timedelta(minutes=7 * i, microseconds=0 if i % 2 else 250000)
        ids.append(
            store.hosts.enroll(
                machine_id=f"m-{name}-{i}", hostname=name, node_key_hash=uuid.uuid4().hex * 2, now=at
            )
        )
    beats = [
        Heartbeat(agent_version="1.0", counters={}),
        Heartbeat(
            agent_version="2.0\u00e9",
            policy_version=2**31 - 1,
            mode="enforce",
            last_scan_at=T0 - timedelta(seconds=1),
            counters={"scans": 100, "kills": 0, "events_dropped": 2**31 - 1},
            circuit_state="closed",
        ),
        Heartbeat(agent_version="3", mode="monitor", counters={"scans": 1}, circuit_state="open"),
    ]
    store.hosts.heartbeat_many(
        [(ids[i], beats[i % 3], T0 - timedelta(minutes=3 * i)) for i in range(0, len(ids) - 2)]
    )
    with store.engine.begin() as conn:
        conn.execute(sa.update(hosts).where(hosts.c.host_id == ids[-1]).values(last_seen=None))
        # Counters no heartbeat stores today: escaped names, stored null, whole-number floats.
        cast = "CAST(:t AS JSON)" if conn.dialect.name == "postgresql" else ":t"
        counters = sa.text(f"UPDATE hosts SET counters = {cast} WHERE host_id = :h")
        for host_id, text in (
            (ids[3], '{"\\u00e9t\\u00e9": 3, "a\\"b": 4}'),
            (ids[4], "null"),
            (ids[5], '{"n": 2.0}'),
        ):
            conn.execute(counters, {"t": text, "h": host_id})
        if conn.dialect.name == "sqlite":
            # Times in other forms than SQLAlchemy writes (another writer, an older version).
            for column, text, host_id in (
                ("last_seen", "2030-05-01 11:55:00", ids[0]),
                ("enrolled_at", "2030-05-01T10:00:00.5+00:00", ids[1]),
            ):
                update = sa.text(f"UPDATE hosts SET {column} = :t WHERE host_id = :h")
                conn.execute(update, {"t": text, "h": host_id})
    return ids


def test_each_page_of_the_host_list_is_the_models_json_byte_for_byte(store: Store) -> None:
    ids = _fill(store)
    for flt in (HostFilter(), HostFilter(mode="enforce"), HostFilter(silent_before=CUTOFF)):
        after = None
        pages = 0
        while True:
            rows, more = store.hosts.listing(flt, after=after, limit=3)
            records = _records(store, rows)
            cursor = encode_host_cursor(rows[-1].hostname, rows[-1].host_id) if more else None
            assert host_list_json(rows, cursor, CUTOFF) == _model_json(records, cursor), flt
            pages += 1
            if not more:
                break
            after = (rows[-1].hostname, rows[-1].host_id)
        assert pages >= (3 if flt == HostFilter() else 1)
    every, _ = store.hosts.listing(HostFilter(), after=None, limit=100)
    assert len(every) == len(ids)
    assert host_list_json([], None, CUTOFF) == _model_json([], None) == '{"items":[],"next_cursor":null}'


def test_the_route_answers_the_models_json(tmp_path: Path) -> None:
    with in_process_server(tmp_path) as server:
        _fill(server.store)
        with server.client(server.config.reader_token) as c:
            answer = c.get("/hosts", params={"limit": 7})
        rows, more = server.store.hosts.listing(HostFilter(), after=None, limit=7)
        records = _records(server.store, rows)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert more
    cursor = encode_host_cursor(records[-1].hostname, records[-1].host_id)
    # Seen in 2030: none is stale by today's clock but the host never seen.
    today = datetime.now(UTC) - timedelta(seconds=server.config.stale_after)
    assert answer.content.decode() == _model_json(records, cursor, today)
    assert [item["stale"] for item in answer.json()["items"]] == [h.last_seen is None for h in records]
