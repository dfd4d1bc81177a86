"""The read side at fleet size, on SQLite and PostgreSQL: the host list a page at a time (complete
and stable while hosts enroll, filters exact), the host filter of the event lists resolved to ids,
every list filter read from its index (EXPLAIN), and migration 9 on a database that has data."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from endpoint_contract.events import Violation
from endpoint_contract.heartbeat import Heartbeat
from server_stub.store import EventFilter, Store, event_insert
from server_stub.store.engine import create_db_engine
from server_stub.store.events import VIOLATION, page_query, resolve_host
from server_stub.store.hosts import HostFilter, ListedHost, host_page_query
from server_stub.store.migrations import MIGRATIONS, migrate
from server_stub.store.tables import events

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def _enroll(store: Store, hostname: str) -> str:
    return store.hosts.enroll(
        machine_id=str(uuid.uuid4()), hostname=hostname, node_key_hash=uuid.uuid4().hex * 2, now=T0
    )


def _all_pages(store: Store, flt: HostFilter, limit: int, between: Any = None) -> list[ListedHost]:
    seen: list[ListedHost] = []
    after = None
    while True:
        page, more = store.hosts.listing(flt, after=after, limit=limit)
        assert len(page) <= limit
        seen += page
        if not more:
            return seen
        assert page, "more pages promised after an empty one"
        after = (page[-1].hostname, page[-1].host_id)
        if between is not None:
            between()


def test_host_pages_miss_and_repeat_no_host_while_hosts_enroll(store: Store) -> None:
    rnd = random.Random(3)
    # Duplicate names (one name, several machines) and names around the page edges.
    names = [f"ws-{rnd.randrange(60):03d}" for _ in range(120)] + ["", "a", "zz", "ws-%", "ws-_x", "wß-1"]
    before = {_enroll(store, n) for n in names if n} | set()
    enrolled_meanwhile: list[str] = []

    def enroll_more() -> None:  # new hosts land before, inside and after the pages already read
        for name in (f"ws-{rnd.randrange(60):03d}", "aaa", "zzz"):
            enrolled_meanwhile.append(_enroll(store, name))

    listed = _all_pages(store, HostFilter(), limit=7, between=enroll_more)
    ids = [h.host_id for h in listed]
    assert len(ids) == len(set(ids)), "a host was listed twice"
    assert before <= set(ids), "a host enrolled before the listing began was missed"
    assert set(ids) <= before | set(enrolled_meanwhile)
    keys = [(h.hostname, h.host_id) for h in listed]
    assert keys == sorted(keys)


def test_host_filters_are_exact(store: Store) -> None:
    beat = {"agent_version": "1.0", "counters": {}}
    rows = [("ws-a1", "enforce", 3), ("ws-a2", "monitor", 3), ("ws-b1", "enforce", 2), ("ws%b", "monitor", 2)]
    ids = {}
    for name, mode, version in rows:
        ids[name] = _enroll(store, name)
        store.hosts.heartbeat(
            ids[name], Heartbeat.model_validate({**beat, "mode": mode, "policy_version": version}), T0
        )
    silent = _enroll(store, "ws-silent")  # enrolled, then never heard of again
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE hosts SET last_seen = NULL WHERE host_id = :h"), {"h": silent})
    now = T0 + timedelta(seconds=10)

    def names(flt: HostFilter, limit: int = 2) -> list[str]:
        return [h.hostname for h in _all_pages(store, flt, limit)]

    assert names(HostFilter(mode="monitor")) == ["ws%b", "ws-a2"]
    assert names(HostFilter(policy_version=3)) == ["ws-a1", "ws-a2"]
    assert names(HostFilter(mode="enforce", policy_version=2)) == ["ws-b1"]
    assert names(HostFilter(hostname_prefix="ws-a")) == ["ws-a1", "ws-a2"]
    assert names(HostFilter(hostname_prefix="ws%")) == ["ws%b"]  # no LIKE wildcard
    assert names(HostFilter(hostname_prefix="ws-a1x")) == []
    assert names(HostFilter(silent_before=now)) == ["ws%b", "ws-a1", "ws-a2", "ws-b1", "ws-silent"]
    assert names(HostFilter(silent_before=T0)) == ["ws-silent"]
    assert names(HostFilter(seen_since=T0)) == ["ws%b", "ws-a1", "ws-a2", "ws-b1"]
    assert names(HostFilter(seen_since=now)) == []


def test_the_key_cache_start_up_read_names_each_host_by_its_key_latest_seen_first(store: Store) -> None:
    """HostRepo.keyed: (node key digest, the host's identity) of at most `limit` hosts, the latest
    seen first and the never seen last -- what a restarted server answers node keys with."""
    keys = {}
    for i in range(6):
        key = f"{i:064x}"
        keys[store.hosts.enroll(machine_id=f"m-{i}", hostname=f"ws-{i}", node_key_hash=key, now=T0)] = key
    ids = list(keys)
    store.hosts.touch_many({host: T0 + timedelta(minutes=i) for i, host in enumerate(ids[:4])})
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE hosts SET last_seen = NULL WHERE host_id = :h"), {"h": ids[5]})
    keyed = store.hosts.keyed(10)
    assert [host.host_id for _, host in keyed][:4] == ids[3::-1]
    assert keyed[-1][1].host_id == ids[5]  # never seen: last
    records = {h.host_id: h for h in store.hosts.list_hosts()}
    for digest, host in keyed:
        full = records[host.host_id]
        assert digest == keys[host.host_id]
        assert (host.machine_id, host.hostname, host.enrolled_at) == (full.machine_id, full.hostname, T0)
    assert [h.host_id for _, h in store.hosts.keyed(2)] == ids[3:1:-1]


def _violation(rule: str, action: str = "killed") -> Violation:
    return Violation.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "detected_at": T0,
            "rule_id": rule,
            "category": "p2p",
            "severity": "medium",
            "action": action,
            "pid": 42,
            "process_name": "x",
            "reason": "matched",
            "policy_version": 1,
        }
    )


def test_the_host_filter_resolves_a_name_or_an_id_to_ids(store: Store) -> None:
    a = _enroll(store, "twin")
    b = _enroll(store, "twin")  # two machines under one name: both are that name
    c = _enroll(store, a)  # a host named like another host's id
    for host in (a, b, c):
        store.events.insert_batch(host, [event_insert(_violation("r"), host)], T0)
    with store.engine.connect() as conn:
        assert resolve_host(conn, EventFilter(host="twin")).host_ids == tuple(sorted((a, b)))
        assert resolve_host(conn, EventFilter(host=a)).host_ids == tuple(sorted((a, c)))
        assert resolve_host(conn, EventFilter(host=b)).host_ids == (b,)
        assert resolve_host(conn, EventFilter(host="nobody")).host_ids == ()

    def hosts_of(host: str) -> set[str]:
        items, _ = store.events.page(VIOLATION, EventFilter(host=host), after_id=0, limit=10)
        return {ev.host_id for ev in items}

    assert hosts_of("twin") == {a, b}
    assert hosts_of(a) == {a, c}
    assert hosts_of("nobody") == set()
    newest, _ = store.events.newest(VIOLATION, EventFilter(host=b), before_id=None, limit=10)
    assert {ev.host_id for ev in newest} == {b}


# Each filter of the event lists, and the index that must serve it in receive order.
EVENT_FILTERS = [
    (EventFilter(host_ids=("h-1",)), "ix_events_host_id"),
    (EventFilter(rule_id="r"), "ix_events_rule_id"),
    (EventFilter(category="p2p"), "ix_events_category_id"),
    (EventFilter(action="killed"), "ix_events_action_id"),
    (EventFilter(severity="high"), "ix_events_kind_severity_id"),
    (EventFilter(triage="acknowledged"), "ix_events_triage_id"),
]
HOST_FILTERS = [
    (HostFilter(), "ix_hosts_hostname"),
    (HostFilter(mode="monitor"), "ix_hosts_mode"),
    (HostFilter(policy_version=3), "ix_hosts_policy_version"),
    (HostFilter(hostname_prefix="ws-1"), "ix_hosts_hostname"),
]


def _plan(conn: sa.Connection, query: sa.Select[Any] | sa.TextualSelect) -> str:
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return "\n".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    # An empty table is read sequentially whatever its indexes: ask whether the index can serve.
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    conn.exec_driver_sql("SET LOCAL enable_sort = off")
    return "\n".join(str(row[0]) for row in conn.exec_driver_sql("EXPLAIN " + sql))


@pytest.mark.parametrize(("flt", "index"), EVENT_FILTERS, ids=[i for _, i in EVENT_FILTERS])
def test_each_event_filter_reads_its_index_in_receive_order(
    store: Store, flt: EventFilter, index: str
) -> None:
    with store.engine.begin() as conn:
        plan = _plan(conn, page_query(VIOLATION, flt, after_id=10, limit=101))
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan  # no sort


@pytest.mark.parametrize(("flt", "index"), HOST_FILTERS, ids=[repr(f) for f, _ in HOST_FILTERS])
def test_each_host_filter_reads_an_index_in_name_order(store: Store, flt: HostFilter, index: str) -> None:
    with store.engine.begin() as conn:
        sqlite = conn.dialect.name == "sqlite"
        plan = _plan(conn, host_page_query(flt, after=("ws-1", "x"), limit=101, binary_order=sqlite))
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan


def test_migrations_9_to_12_apply_to_a_database_with_hosts_and_events(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        assert migrate(engine, MIGRATIONS[:8]) == 8
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO hosts (host_id, machine_id, hostname, node_key_hash, enrolled_at)"
                    " VALUES ('h-1', 'm-1', 'ws-1', :key, :t)"
                ),
                {"key": "k" * 64, "t": T0},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO events (host_id, event_id, kind, received_at, detected_at, rule_id, data)"
                    " VALUES ('h-1', 'e-1', 'violation', :t, :t, 'r', '{}')"
                ),
                {"t": T0},
            )
        assert migrate(engine) == MIGRATIONS[-1].version
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("events")}
        indexes |= {i["name"] for i in sa.inspect(engine).get_indexes("hosts")}
        assert {"ix_events_host_id", "ix_events_category_id", "ix_hosts_hostname", "ix_hosts_mode"} <= indexes
        # migration 17: a host's or rule's period is walked by id, not read from a time index of its own
        assert not {"ix_events_host_detected", "ix_events_rule_detected"} & indexes
    finally:
        engine.dispose()
    store = Store.open(db_url)
    try:
        items, _ = store.events.page(VIOLATION, EventFilter(host="ws-1"), after_id=0, limit=5)
        assert [ev.host_id for ev in items] == ["h-1"]
        page, more = store.hosts.listing(HostFilter(hostname_prefix="ws"), after=None, limit=5)
        assert [h.host_id for h in page] == ["h-1"] and not more
    finally:
        store.close()


def _spread(store: Store, n: int) -> tuple[list[str], datetime]:
    """`n` violations detected over 30 days, most in arrival order, some uploaded late, some from a
    clock running ahead; varied hosts, rules, actions and triage."""
    rnd = random.Random(5)
    hosts = [_enroll(store, f"ws-{i}") for i in range(4)]
    now = T0 + timedelta(days=30)
    for i in range(n):
        at = T0 + timedelta(days=30 * i / n)
        if i % 17 == 0:
            at -= timedelta(days=rnd.randrange(1, 20))  # a laptop back online
        if i % 29 == 0:
            at += timedelta(days=2)  # its clock is ahead
        v = _violation(f"r{i % 3}", ("killed", "reported")[i % 2]).model_copy(update={"detected_at": at})
        host = hosts[i % 4]
        store.events.insert_batch(host, [event_insert(v, host)], T0)
        if i % 5 == 0:
            store.events.set_triage([(host, v.event_id)], "acknowledged", "", "t", "analyst", T0)
    return hosts, now


def test_the_span_of_detection_times_is_two_index_seeks(store: Store) -> None:
    from server_stub.store.events import span_query

    if store.engine.dialect.name == "sqlite":
        # As a million events analyzed before migration 14 left them: statistics for the other
        # indexes, none for the day index (SQLite then took that one, covering too, and sorted
        # every event of the kind).
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = 'events'")
            for idx, stat in (
                ("ix_events_kind_id", "1005000 502500 1"),
                ("ix_events_console", "1005000 502500 1 1 1 1 1 1"),
            ):
                conn.exec_driver_sql(f"INSERT INTO sqlite_stat1 VALUES ('events', '{idx}', '{stat}')")
            conn.exec_driver_sql("ANALYZE sqlite_schema")  # the planner reloads the statistics
    with store.engine.begin() as conn:
        plan = _plan(conn, span_query(VIOLATION, conn.dialect.name))
    assert plan.count("ix_events_console") == 2, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan


TIME_FILTERS = [
    (EventFilter(since=T0), ("ix_events_console",)),
    (
        EventFilter(since=T0, category="p2p", action="killed"),
        ("ix_events_console",),
    ),
]


@pytest.mark.parametrize(("flt", "indexes"), TIME_FILTERS, ids=["time", "time+category"])
def test_the_time_plan_reads_the_period_from_a_time_index(
    tmp_path: Path, flt: EventFilter, indexes: tuple[str, ...]
) -> None:
    # SQLite only: PostgreSQL chooses among the indexes by their statistics, meaningless on an
    # empty table (the readside benchmark shows its plans at a million rows).
    store = Store.open(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        with store.engine.begin() as conn:
            plan = _plan(conn, page_query(VIOLATION, flt, after_id=10, limit=101, walk_ids=False))
    finally:
        store.close()
    assert any(index in plan for index in indexes), plan


@pytest.mark.parametrize(
    ("collation", "binary"),
    [
        ("C", True),
        ("POSIX", True),
        ("C.UTF-8", True),
        ("C.utf8", True),
        ("en_US.UTF-8", False),
        ("de_DE", False),
    ],
)
def test_a_name_prefix_is_one_closed_range_only_where_names_sort_by_code_point(
    collation: str, binary: bool
) -> None:
    from server_stub.store.hosts import _is_binary_collation

    assert _is_binary_collation(collation) is binary


def _in(flt: EventFilter, row: Any) -> bool:
    """Whether a stored violation meets the filter (time, host, rule, action, category, severity,
    triage), decided here from its columns."""
    triage = {
        None: True,
        "open": row.triage_state is None,
        "triaged": row.triage_state is not None,
    }.get(flt.triage, row.triage_state == flt.triage)
    return (
        (flt.since is None or row.detected_at >= flt.since)
        and (flt.until is None or row.detected_at < flt.until)
        and (flt.host_ids is None or row.host_id in flt.host_ids)
        and all(
            want is None or want == have
            for want, have in (
                (flt.rule_id, row.rule_id),
                (flt.action, row.action),
                (flt.category, row.category),
                (flt.severity, row.severity),
            )
        )
        and triage
    )


def _stored_violations(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(
            sa.select(
                events.c.id, events.c.detected_at, events.c.host_id, events.c.rule_id, events.c.action,
                events.c.category, events.c.severity, events.c.triage_state,
            ).where(events.c.kind == VIOLATION)
        ))  # fmt: skip


def _listed(store: Store, flt: EventFilter, limit: int) -> tuple[list[int], list[int]]:
    """Every page of the filter, `limit` at a time: (ids in receive order, ids newest first), each
    page continuing from the previous one's last event as the API's cursors do."""
    ids: list[int] = []
    after = 0
    while True:
        items, more = store.events.page(VIOLATION, flt, after_id=after, limit=limit)
        assert len(items) <= limit
        ids += [e.id for e in items]
        if not more:
            break
        assert items, "more promised after an empty page"
        after = items[-1].id
    newest: list[int] = []
    before = None
    while True:
        items, more = store.events.newest(VIOLATION, flt, before_id=before, limit=limit)
        newest += [e.id for e in items]
        if not more:
            break
        before = items[-1].id
    return ids, newest


def test_a_period_lists_exactly_its_events_in_receive_order_with_any_other_filter(store: Store) -> None:
    hosts, now = _spread(store, 240)
    stored = _stored_violations(store)
    filters = [
        EventFilter(since=now - timedelta(days=1)),  # the events of a clock running ahead too
        EventFilter(since=now - timedelta(days=7)),
        EventFilter(since=now - timedelta(days=14, hours=7)),
        EventFilter(since=now - timedelta(days=28)),
        EventFilter(since=now - timedelta(days=45, hours=3)),  # from before most events
        EventFilter(until=now - timedelta(days=20)),
        EventFilter(since=now - timedelta(days=20), until=now - timedelta(days=19)),
        EventFilter(since=now - timedelta(days=20, hours=-9), until=now - timedelta(days=20, hours=-11)),
        EventFilter(since=now - timedelta(days=7), action="killed"),
        EventFilter(since=now - timedelta(days=12, hours=5), triage="acknowledged"),
        EventFilter(since=now - timedelta(days=7), triage="open"),
        EventFilter(since=now - timedelta(days=7), triage="triaged"),
        EventFilter(since=now - timedelta(days=3), category="p2p", triage="open"),
        EventFilter(since=now - timedelta(days=7), category="p2p", action="killed"),
        EventFilter(
            since=now - timedelta(days=6, hours=-9), until=now - timedelta(days=1, hours=-10), category="p2p"
        ),
        EventFilter(since=now - timedelta(days=9), until=now - timedelta(days=4, hours=7), action="reported"),
        EventFilter(until=now - timedelta(days=22), severity="medium"),
        EventFilter(since=now - timedelta(days=7), rule_id="r1"),
        EventFilter(since=now - timedelta(days=9), host_ids=(hosts[1],)),
        EventFilter(since=now - timedelta(days=5), category="vpn"),  # none
        EventFilter(since=now + timedelta(days=5)),  # after every event
        EventFilter(since=now - timedelta(days=9), until=now - timedelta(days=9)),  # an empty period
    ]
    for flt in filters:
        expected = sorted(r.id for r in stored if _in(flt, r))
        nothing = flt.category == "vpn" or (flt.since is not None and flt.since >= now - timedelta(days=9))
        assert expected or nothing, flt
        for limit in (4, 500):
            ids, newest = _listed(store, flt, limit)
            assert ids == expected == newest[::-1], (flt, limit)
    # A clock years ahead: more days than one window takes (MAX_DAYS), the same events listed.
    from server_stub.store.events import MAX_DAYS

    with store.engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.min(events.c.id))).scalar()
        far = now + timedelta(days=MAX_DAYS + 300)
        conn.execute(sa.update(events).where(events.c.id == first).values(detected_at=far))
    stored = _stored_violations(store)
    for flt in filters[:3] + filters[8:10]:
        expected = sorted(r.id for r in stored if _in(flt, r))
        assert first in expected, flt
        ids, newest = _listed(store, flt, 4)
        assert ids == expected == newest[::-1], flt


def test_the_id_window_of_a_period_is_exact(store: Store) -> None:
    """From the period's first id (to its last, with an end): late uploads and clocks running ahead
    included, so a walk inside it misses nothing; no window where nothing is in the period."""
    from server_stub.store.events import plan

    _, now = _spread(store, 240)
    stored = _stored_violations(store)
    for flt in [
        EventFilter(since=now - timedelta(days=1)),
        EventFilter(since=now - timedelta(days=7), action="killed"),
        EventFilter(since=now - timedelta(days=12, hours=5), triage="acknowledged"),
        EventFilter(
            since=now - timedelta(days=6, hours=-9), until=now - timedelta(days=1, hours=-10), category="p2p"
        ),
        EventFilter(until=now - timedelta(days=22), severity="medium"),
        EventFilter(since=now - timedelta(days=20), until=now - timedelta(days=19)),
        EventFilter(since=now + timedelta(days=5), action="killed"),
        EventFilter(since=now - timedelta(days=9), host_ids=(stored[0].host_id,)),
        EventFilter(since=now - timedelta(days=3, hours=7), until=now - timedelta(hours=30), rule_id="r1"),
    ]:
        period = [r.id for r in stored if _in(EventFilter(since=flt.since, until=flt.until), r)]
        with store.engine.connect() as conn:
            p = plan(conn, VIOLATION, flt)
        if period:
            assert p.walk_ids and not p.empty and p.first_id == min(period), flt
            assert p.last_id == (max(period) if flt.until is not None else None), flt
        else:
            assert p.empty, flt


# Around midnight, to the microsecond, and the two sides of noon (an end day's part inside the
# period is read one way when it is under 12 hours, the other way when it is not).
CLOCK = [
    timedelta(0),
    timedelta(microseconds=1),
    timedelta(hours=6),
    timedelta(hours=12) - timedelta(microseconds=1),
    timedelta(hours=12),
    timedelta(hours=18),
    timedelta(days=1) - timedelta(microseconds=1),
]
MIDNIGHT = datetime(2030, 5, 1, tzinfo=UTC)


def _around_midnights(store: Store) -> list[str]:
    """Violations at each CLOCK time of four days, received mostly in detection order, with a late
    upload of the first day's events at the end and a clock ahead sending the last day's first."""
    hosts = [_enroll(store, "ws-a"), _enroll(store, "ws-b")]
    times = [MIDNIGHT + timedelta(days=d) + t for d in range(4) for t in CLOCK]
    late = times[: len(CLOCK)]
    ahead = times[-2:]
    order = ahead + [t for t in times if t not in late and t not in ahead] + late
    for i, at in enumerate(order):
        v = _violation(f"r{i % 2}", ("killed", "reported")[i % 3 == 0]).model_copy(update={"detected_at": at})
        store.events.insert_batch(hosts[i % 2], [event_insert(v, hosts[i % 2])], T0)
    return hosts


def test_pages_of_a_period_cross_day_boundaries_to_the_microsecond(store: Store) -> None:
    _around_midnights(store)
    stored = _stored_violations(store)
    d1, d2 = MIDNIGHT + timedelta(days=1), MIDNIGHT + timedelta(days=2)
    us = timedelta(microseconds=1)
    ends = [d1, d1 + us, d1 - us, d1 + timedelta(hours=6), d1 + timedelta(hours=18), d2 - us]
    filters = [EventFilter(since=at) for at in ends]
    filters += [
        EventFilter(until=at)
        for at in (d2, d2 + us, d2 - us, d2 + timedelta(hours=6), d2 + timedelta(hours=18))
    ]
    filters += [
        EventFilter(since=d1 + timedelta(hours=18), until=d2 + timedelta(hours=6)),
        EventFilter(since=d1 + timedelta(hours=6), until=d2 + timedelta(hours=18)),
        EventFilter(since=d1, until=d2),
        EventFilter(since=d1 + timedelta(hours=6), until=d1 + timedelta(hours=12)),  # one day, both ends
        EventFilter(since=d1 - us, until=d1 + us),
        EventFilter(since=d1 + timedelta(hours=6), action="killed"),
        EventFilter(since=d1 + timedelta(hours=18), until=d2 + timedelta(hours=18), triage="open"),
        EventFilter(since=d1 + timedelta(hours=6), rule_id="r1"),
    ]
    for flt in filters:
        expected = sorted(r.id for r in stored if _in(flt, r))
        assert expected, flt
        for limit in (1, 3):
            ids, newest = _listed(store, flt, limit)
            assert ids == expected == newest[::-1], (flt, limit)


def test_the_violations_api_pages_a_period_across_days_by_cursor(db_url: str, tmp_path: Path) -> None:
    """What a client sees: GET /violations?since=... followed by next_cursor, a page of 4 at a time,
    lists each violation of the period once, in the order the server received them."""
    from tests.support.inprocess_server import in_process_server

    with in_process_server(tmp_path, db_url=db_url) as server:
        _around_midnights(server.store)
        stored = _stored_violations(server.store)
        since = MIDNIGHT + timedelta(days=1, hours=18)
        expected = [r.id for r in sorted(stored, key=lambda r: r.id) if r.detected_at >= since]
        seen: list[Any] = []
        params: dict[str, Any] = {"since": since.isoformat(), "limit": 4}
        with server.client(server.config.reader_token) as c:
            for _ in range(len(stored)):
                answer = c.get("/violations", params=params)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert len(body["items"]) <= 4
                seen += body["items"]
                if not body["next_cursor"]:
                    break
                params["cursor"] = body["next_cursor"]
    assert len(seen) == len(expected) and len({item["event_id"] for item in seen}) == len(seen)
    detected = [datetime.fromisoformat(item["detected_at"].replace("Z", "+00:00")) for item in seen]
    assert all(at >= since for at in detected)
    # Receive order: the stored ids of the listed events, in the order listed.
    with server.store.engine.connect() as conn:
        id_of = dict(conn.execute(sa.select(events.c.event_id, events.c.id)).all())
    assert [id_of[item["event_id"]] for item in seen] == expected


def test_the_id_window_is_one_statement_of_index_seeks_whatever_the_period(store: Store) -> None:
    """Its text is the same for a period of 3 days or of 30 (the days are one parameter), and
    each database reads it by seeks: a seek per day of ix_events_kind_day_id, the end days'
    parts from an index, no table scan, no sort."""
    from server_stub.store.events import id_window_query

    with store.engine.begin() as conn:
        texts = set()
        for n in (3, 4, 30):
            days = tuple(T0.date() + timedelta(days=i) for i in range(n))
            # From 15:00 (nine hours of the day inside: read from the time index) to 14:00 (the
            # ten hours after it are walked past in the day index).
            until = T0 + timedelta(days=n - 1, hours=2)
            flt = EventFilter(since=T0 + timedelta(hours=3), until=until, action="killed")
            query, params = id_window_query(VIOLATION, flt, days, conn.dialect.name)
            texts.add(str(query.compile(dialect=conn.dialect)))
        assert len(texts) == 1, texts
        compiled = query.compile(dialect=conn.dialect)
        values = compiled.construct_params(params)
        if conn.dialect.name == "sqlite":
            positional: Any = tuple(values[name] for name in compiled.positiontup or ())
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), positional)
            plan = "\n".join(str(row[-1]) for row in rows)
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            conn.exec_driver_sql("SET LOCAL enable_sort = off")
            rows = conn.exec_driver_sql("EXPLAIN " + str(compiled), values)
            plan = "\n".join(str(row[0]) for row in rows)
    assert "ix_events_kind_day_id" in plan and "ix_events_console" in plan, plan
    assert "SCAN events" not in plan and "Seq Scan" not in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan
