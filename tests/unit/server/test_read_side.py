"""The read side at fleet size, on SQLite and PostgreSQL: the host list a page at a time (complete
and stable while hosts enroll, filters exact), the host filter of the event lists resolved to ids,
every list filter read from its index (EXPLAIN), and migration 9 on a database that has data."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
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
        if engine.dialect.name == "postgresql":  # migration 12: a period's ids from the index alone
            with engine.connect() as conn:
                defs = conn.execute(
                    sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE '%_detected'")
                ).all()
            assert {name for name, d in defs if d.endswith("INCLUDE (id)")} == {
                "ix_events_host_detected",
                "ix_events_rule_detected",
            }
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


def _days(store: Store, flt: EventFilter) -> tuple[date, ...]:
    """Every UTC day of the filter's period on which a violation is stored."""
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(events.c.detected_at).where(events.c.kind == VIOLATION)).scalars()
        return tuple(
            sorted(
                {
                    at.date()
                    for at in stored
                    if (flt.since is None or at >= flt.since) and (flt.until is None or at < flt.until)
                }
            )
        )


def test_both_plans_of_a_time_filter_list_the_same_events(store: Store) -> None:
    hosts, now = _spread(store, 240)
    filters = [
        EventFilter(since=now - timedelta(days=1)),
        EventFilter(since=now - timedelta(days=14)),
        EventFilter(since=now - timedelta(days=28)),
        EventFilter(until=now - timedelta(days=20)),
        EventFilter(since=now - timedelta(days=20), until=now - timedelta(days=19)),
        EventFilter(since=now - timedelta(days=7), rule_id="r1"),
        EventFilter(since=now - timedelta(days=7), category="p2p", action="killed"),
        EventFilter(since=now - timedelta(days=7), triage="open"),
        EventFilter(since=now - timedelta(days=7), triage="acknowledged"),
        EventFilter(since=now - timedelta(days=9), host_ids=(hosts[1],)),
    ]
    # The id walk, the time range, and for a time-only filter each day of it merged.
    time_only = [replace(flt, since=None, until=None) == EventFilter() for flt in filters]
    days = {i: _days(store, flt) for i, flt in enumerate(filters) if time_only[i]}
    found: dict[int, list[int] | None] = {}
    with store.engine.connect() as conn:
        for i, flt in enumerate(filters):
            expected = None
            plans = [(True, None), (False, None)] + ([(False, days[i])] if i in days else [])
            for walk, on_days in plans:
                for newest in (False, True):
                    ids, cursor = [], None
                    while True:  # every page, 7 at a time
                        kw: dict[str, Any] = {"before_id": cursor} if newest else {"after_id": cursor or 0}
                        q = page_query(
                            VIOLATION,
                            flt,
                            limit=8,
                            newest_first=newest,
                            walk_ids=walk,
                            days=on_days,
                            sorted_parts=conn.dialect.name == "postgresql",
                            **kw,
                        )
                        page = [row.id for row in conn.execute(q)]
                        ids += page[:7]
                        if len(page) <= 7:
                            break
                        cursor = page[6]
                    assert ids == sorted(ids, reverse=newest)
                    if expected is None:
                        expected = sorted(ids)
                        assert expected, flt  # each filter finds something
                    assert sorted(ids) == expected, (flt, walk, on_days, newest)
            found[i] = expected
    # The store picks a plan (the days of a recent period: see the next test) and finds the same.
    for i, flt in enumerate(filters):
        items, _ = store.events.page(VIOLATION, flt, after_id=0, limit=500)
        newest_items, _ = store.events.newest(VIOLATION, flt, before_id=None, limit=500)
        assert [e.id for e in items] == found[i] == sorted(e.id for e in newest_items), flt


def test_a_recent_period_is_read_by_time_an_old_start_by_id(store: Store) -> None:
    from server_stub.store.events import walk_ids

    _, now = _spread(store, 60)
    with store.engine.connect() as conn:
        assert walk_ids(conn, VIOLATION, EventFilter()) is True
        assert walk_ids(conn, VIOLATION, EventFilter(since=now - timedelta(days=1))) is False
        assert walk_ids(conn, VIOLATION, EventFilter(since=now - timedelta(days=60))) is True
        assert walk_ids(conn, VIOLATION, EventFilter(until=now - timedelta(days=25))) is True
        old_day = EventFilter(since=now - timedelta(days=26), until=now - timedelta(days=25))
        assert walk_ids(conn, VIOLATION, old_day) is False
        assert (
            walk_ids(conn, VIOLATION, EventFilter(since=now - timedelta(days=1)), newest_first=True) is True
        )
        assert walk_ids(conn, "agent", EventFilter(since=now)) is True  # no agent events at all


def test_a_recent_period_is_read_day_by_day_through_the_last_stored_day(store: Store) -> None:
    from server_stub.store.events import MAX_DAYS, plan

    _, now = _spread(store, 60)
    with store.engine.connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(events.c.detected_at))).scalar_one()
        recent = plan(conn, VIOLATION, EventFilter(since=now - timedelta(days=1)))
        assert recent.days is not None and not recent.walk_ids
        # From the first day of the period to the last day an event is stored on (a clock ahead).
        assert recent.days[0] == (now - timedelta(days=1)).date()
        assert recent.days[-1] == latest.astimezone(UTC).date() > now.date()
        assert list(recent.days) == [recent.days[0] + timedelta(days=i) for i in range(len(recent.days))]
        old_day = EventFilter(since=now - timedelta(days=26), until=now - timedelta(days=25))
        days = plan(conn, VIOLATION, old_day).days
        assert days == ((now - timedelta(days=26)).date(), (now - timedelta(days=25)).date())
        # Other filters (read from their own indexes), and more days than MAX_DAYS: the time range.
        assert plan(conn, VIOLATION, EventFilter(since=now - timedelta(days=1), rule_id="r1")).days is None
        with_category = EventFilter(since=now - timedelta(days=1), category="p2p")
        assert plan(conn, VIOLATION, with_category).days is None
        far = now + timedelta(days=MAX_DAYS + 1)
        assert plan(conn, VIOLATION, EventFilter(since=now - timedelta(days=1), until=far)).days is not None
        conn.execute(
            sa.update(events).where(events.c.id == conn.execute(sa.select(sa.func.min(events.c.id))).scalar())
            .values(detected_at=far)
        )  # fmt: skip
        assert plan(conn, VIOLATION, EventFilter(since=now - timedelta(days=1))).days is None


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


def test_the_day_plan_merges_each_day_from_its_index_without_sorting(store: Store) -> None:
    days = tuple(T0.date() + timedelta(days=i) for i in range(5))
    with store.engine.begin() as conn:
        for newest in (False, True):
            query = page_query(
                VIOLATION, EventFilter(since=T0), after_id=10, limit=101, walk_ids=False, days=days,
                newest_first=newest, sorted_parts=conn.dialect.name == "postgresql",
            )  # fmt: skip
            plan = _plan(conn, query)
            assert plan.count("ix_events_kind_day_id") == len(days), plan
            assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan


def test_the_store_reads_a_recent_period_by_merging_its_days_without_sorting(store: Store) -> None:
    from sqlalchemy import event

    _, now = _spread(store, 60)
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "UNION ALL" in statement:
            seen.append((statement, parameters))

    flt = EventFilter(since=now - timedelta(days=3))
    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.events.page(VIOLATION, flt, after_id=0, limit=5)
        store.events.newest(VIOLATION, replace(flt, until=now - timedelta(days=1)), before_id=None, limit=5)
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    assert len(seen) == 2, seen
    with store.engine.begin() as conn:
        for statement, parameters in seen:
            if conn.dialect.name == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                plan = "\n".join(str(row[-1]) for row in rows)
            else:
                conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                conn.exec_driver_sql("SET LOCAL enable_sort = off")
                plan = "\n".join(
                    str(row[0]) for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters)
                )
            assert "ix_events_kind_day_id" in plan, plan
            assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan


TIME_FILTERS = [
    (EventFilter(since=T0), ("ix_events_console",)),
    (
        EventFilter(since=T0, category="p2p", action="killed"),
        ("ix_events_console",),
    ),
    (EventFilter(since=T0, rule_id="r"), ("ix_events_rule_detected",)),
    (EventFilter(since=T0, host_ids=("h-1",)), ("ix_events_host_detected",)),
]


@pytest.mark.parametrize(
    ("flt", "indexes"), TIME_FILTERS, ids=["time", "time+category", "time+rule", "time+host"]
)
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
    """Whether a stored violation meets the filter (its time, action, category, severity, triage)."""
    triage = {None: True, "open": row.triage_state is None}.get(flt.triage, row.triage_state == flt.triage)
    return (
        (flt.since is None or row.detected_at >= flt.since)
        and (flt.until is None or row.detected_at < flt.until)
        and all(
            want is None or want == have
            for want, have in (
                (flt.action, row.action),
                (flt.category, row.category),
                (flt.severity, row.severity),
            )
        )
        and triage
    )


def test_a_period_with_other_filters_is_walked_within_its_exact_id_window(store: Store) -> None:
    from server_stub.store.events import plan

    _, now = _spread(store, 240)
    with store.engine.connect() as conn:
        stored = conn.execute(
            sa.select(
                events.c.id, events.c.detected_at, events.c.action, events.c.category, events.c.severity,
                events.c.triage_state,
            ).where(events.c.kind == VIOLATION)
        ).all()  # fmt: skip
    filters = [
        EventFilter(since=now - timedelta(days=7), action="killed"),
        EventFilter(since=now - timedelta(days=12, hours=5), triage="acknowledged"),
        EventFilter(since=now - timedelta(days=3), category="p2p", triage="open"),
        EventFilter(
            since=now - timedelta(days=6, hours=-9), until=now - timedelta(days=1, hours=-10), category="p2p"
        ),
        EventFilter(since=now - timedelta(days=9), until=now - timedelta(days=4, hours=7), action="reported"),
        EventFilter(until=now - timedelta(days=22), severity="medium"),
        EventFilter(since=now - timedelta(days=45, hours=3)),  # time only, from before most events
        EventFilter(since=now - timedelta(days=5), category="vpn"),  # none
        EventFilter(since=now + timedelta(days=5), action="killed"),  # after every event
    ]
    for flt in filters:
        expected = sorted(r.id for r in stored if _in(flt, r))
        period = [r.id for r in stored if _in(EventFilter(since=flt.since, until=flt.until), r)]
        with store.engine.connect() as conn:
            p = plan(conn, VIOLATION, flt)
        # The window is exact: from the period's first id (to its last, with an end), late
        # uploads and clocks running ahead included.
        if period:
            assert p.walk_ids and p.first_id == min(period), flt
            assert p.last_id == (max(period) if flt.until is not None else None), flt
        else:
            assert p.days == () and not p.walk_ids, flt
        ids: list[int] = []
        newest: list[int] = []
        after, before = 0, None
        while True:  # every page, 4 at a time, each way
            items, more = store.events.page(VIOLATION, flt, after_id=after, limit=4)
            ids += [e.id for e in items]
            if not more:
                break
            after = items[-1].id
        while True:
            items, more = store.events.newest(VIOLATION, flt, before_id=before, limit=4)
            newest += [e.id for e in items]
            if not more:
                break
            before = items[-1].id
        assert ids == expected == newest[::-1], flt
        assert expected or flt.category == "vpn" or flt.since > now, flt


def test_the_id_window_is_a_seek_per_day_and_the_shorter_part_of_its_ends(tmp_path: Path) -> None:
    # SQLite only, as test_the_time_plan_reads_the_period_from_a_time_index (PostgreSQL's plans at
    # a million rows: the readside benchmark).
    from server_stub.store.events import id_window_query

    store = Store.open(f"sqlite:///{tmp_path / 'plans.db'}")

    days = tuple(T0.date() + timedelta(days=i) for i in range(4))
    # From 15:00 (nine hours of the day left: read from the time index) to 14:00 three days later
    # (fourteen hours in: the ten after it are read from the day index).
    flt = EventFilter(since=T0 + timedelta(hours=3), until=T0 + timedelta(days=3, hours=2), action="killed")
    try:
        with store.engine.begin() as conn:
            plan = _plan(conn, id_window_query(VIOLATION, flt, days))
    finally:
        store.close()
    assert plan.count("ix_events_kind_day_id") == 2 * len(days) - 1, plan
    assert plan.count("ix_events_console") == 1, plan
    assert "SCAN events" not in plan and "Seq Scan" not in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan
