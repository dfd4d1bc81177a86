"""GET /summary's by_host lists every host with a violation (tens of thousands in a big fleet), so
each entry is written as JSON text by the database (server_stub/store/stats.py _HostEntry): the
same entries, in the same order, byte for byte, as the counts written by json -- for every way the
counts by host are found (running totals, daily rows, the events), names that need escaping and a
host the hosts table does not know -- and the route's body is what the model (SummaryOut) writes,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from endpoint_contract.events import Violation
from server_stub.routes.reports import summary_model
from server_stub.store import EventFilter, Store, event_insert
from server_stub.store.stats import Summary
from server_stub.store.tables import hosts
from tests.support.inprocess_server import in_process_server

T0 = datetime(2030, 5, 20, 12, 0, tzinfo=UTC)
NAMES = [
    "ws-plain",
    'quote"and\\backslash',
    "tab\tnew\nline\x01ctl\x1f\b\f\r",
    "ünïcødé-wś-日本",
    "emoji-\U0001f600",
    "slash/<script>&amp;",
    "del\x7f-and-\u2028-sep",
    "z" * 200,
    "gone",  # its hosts row removed: counted, shown without a name
]
# Each way the counts by host are found (server_stub/store/stats.py StatsRepo.summary).
FILTERS = {
    "all time (running totals)": EventFilter(),
    "a few days (daily rows)": EventFilter(
        since=T0 - timedelta(days=3, hours=5), until=T0 + timedelta(days=1)
    ),
    "three weeks (running totals at both ends)": EventFilter(
        since=T0 - timedelta(days=20, minutes=30), until=T0 - timedelta(hours=2, minutes=10)
    ),
    "a rule": EventFilter(rule_id="r1"),
    "a category (events)": EventFilter(category="p2p", since=T0 - timedelta(days=12)),
    "a triage state": EventFilter(triage="acknowledged"),
    "an action, a few days": EventFilter(action="killed", since=T0 - timedelta(days=4)),
}


def _violation(i: int, at: datetime) -> Violation:
    return Violation.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "detected_at": at,
            "rule_id": f"r{i % 3}",
            "category": ("p2p", "vpn")[i % 2],
            "severity": "medium",
            "action": ("killed", "reported")[i % 3 == 0],
            "pid": 42,
            "process_name": "x",
            "reason": "matched",
            "policy_version": 1,
        }
    )


def _fill(store: Store) -> None:
    """Violations over 30 days from hosts with the NAMES, each host a different number (ties too),
    some acknowledged; then the last host's row removed."""
    ids = []
    for k, name in enumerate(NAMES):
        host = store.hosts.enroll(machine_id=f"m-{k}", hostname=name, node_key_hash=f"{k:064x}", now=T0)
        ids.append(host)
        rows = [
            event_insert(_violation(i, T0 - timedelta(days=(i * 7 + k) % 30, minutes=13 * i)), host)
            for i in range(3 + 2 * (k % 4))
        ]
        store.events.insert_batch(host, rows, T0)
        for ev in rows[::3]:
            store.events.set_triage([(host, ev.event_id)], "acknowledged", "", "t", "analyst", T0)
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        if store.engine.dialect.name == "sqlite":
            cur.execute("PRAGMA foreign_keys = OFF")  # (PostgreSQL's events have no foreign key)
        cur.execute(str(sa.delete(hosts).where(hosts.c.host_id == ids[-1]).compile(
            dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}
        )))  # fmt: skip
        raw.commit()
    finally:
        raw.close()


def _entries(s: Summary) -> list[str]:
    """The counts by host as the route wrote them with json."""
    return [
        json.dumps(
            {"count": c.count, "host": c.key, **({"hostname": c.label} if c.label is not None else {})},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for c in s.by_host
    ]


def test_the_databases_entries_are_jsons_byte_for_byte(store: Store) -> None:
    _fill(store)
    for what, flt in FILTERS.items():
        counted = store.stats.summary(flt)
        written = store.stats.summary(flt, host_texts=True)
        assert written.by_host == [] and written.by_host_texts is not None, what
        assert written.by_host_texts == _entries(counted), what
        assert len(counted.by_host) >= 3, what
        assert counted.by_rule == written.by_rule and counted.total == written.total, what
    everyone = store.stats.summary(EventFilter(), host_texts=True).by_host_texts or []
    assert len(everyone) == len(NAMES)
    assert sum('"hostname"' not in entry for entry in everyone) == 1  # the host without a row
    # A few: only the largest, as counts (the console's); a filter by host: counted from its events.
    assert store.stats.summary(EventFilter(), top=2, host_texts=True).by_host_texts == everyone[:2]
    assert store.stats.summary(EventFilter(host="ws-plain"), host_texts=True).by_host_texts is None


def test_the_route_answers_the_models_json(db_url: str, tmp_path: Path) -> None:
    with in_process_server(tmp_path, db_url=db_url) as server:
        _fill(server.store)
        with server.client(server.config.reader_token) as c:
            for params in (
                {},
                {"since": (T0 - timedelta(days=3)).isoformat()},
                {"category": "p2p"},
                {"host": "ws-plain"},
            ):
                answer = c.get("/summary", params=params)
                assert answer.status_code == 200, answer.text
                since = datetime.fromisoformat(params["since"]) if "since" in params else None
                flt = EventFilter(since=since, category=params.get("category"), host=params.get("host"))
                s = server.store.stats.summary(flt)
                model = summary_model(flt, s)  # by_host from the counts
                assert answer.content.decode() == model.model_dump_json(exclude_none=True), params
                assert len(answer.json()["by_host"]) == len(s.by_host) > 0, params
