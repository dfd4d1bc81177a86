"""The rollups give exactly what counting the events gives, for any period, filter and triage."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from server_stub.store import EventFilter, EventInsert, Store, stats
from server_stub.store.rollup import rebuild, split
from server_stub.store.tables import host_daily, host_running, host_totals, violation_daily, violation_hourly

T0 = datetime(2030, 3, 10, 12, 0, tzinfo=UTC)
RULES = [("p2p-a", "p2p"), ("p2p-b", "p2p"), ("remote", "remote-access"), ("miner", "mining")]
ACTIONS = ["killed", "reported", "would_block", "kill_failed", "suspended"]


def _load(store: Store, rnd: random.Random) -> list[str]:
    hosts = [
        store.hosts.enroll(machine_id=f"m{i}", hostname=f"ws-{i}", node_key_hash=f"{i:064x}", now=T0)
        for i in range(4)
    ]
    for host in hosts:
        batch = []
        for _ in range(60):
            rule, category = rnd.choice(RULES)
            when = T0 - timedelta(minutes=rnd.randrange(6 * 24 * 60))
            action = rnd.choice(ACTIONS)
            event_id = str(uuid.uuid4())
            first = when - timedelta(seconds=rnd.randrange(5))
            batch.append(EventInsert(event_id, "violation", when, {"event_id": event_id}, rule_id=rule,
                                  category=category, action=action, first_seen=first))  # fmt: skip
        store.events.insert_batch(host, batch, T0)
        store.events.insert_batch(host, batch[:10], T0)  # a retried upload is not counted twice
    return hosts


def _running(store: Store) -> dict[str, set[tuple[object, ...]]]:
    with store.engine.connect() as conn:
        return {t.name: {tuple(r) for r in conn.execute(sa.select(t))} for t in (host_running, host_totals)}


def _raw_total(store: Store, flt: EventFilter) -> int:
    total, after = 0, 0
    while True:
        items, more = store.events.page("violation", flt, after_id=after, limit=1000)
        total += len(items)
        if not more:
            return total
        after = items[-1].id


@pytest.mark.parametrize(("seed", "daily_max"), [(1, timedelta.min), (2, timedelta.max)])
def test_rollup_counts_equal_the_events(
    store: Store, seed: int, daily_max: timedelta, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counts by host of a period from the running totals (none counted by day rows), then from the
    # daily rows for every period (server_stub/store/stats.py DAILY_MAX).
    monkeypatch.setattr(stats, "DAILY_MAX", daily_max)
    rnd = random.Random(seed)
    hosts = _load(store, rnd)
    some = store.events.page("violation", EventFilter(), after_id=0, limit=500)[0]
    for ev in rnd.sample(some, 25):
        store.events.set_triage(
            [(ev.host_id, ev.data["event_id"])],
            rnd.choice(["acknowledged", "escalated"]),
            "n",
            "t",
            "analyst",
            T0,
        )
    for ev in rnd.sample(some, 5):  # reopened, or triaged again
        store.events.set_triage(
            [(ev.host_id, ev.data["event_id"])], rnd.choice([None, "false_positive"]), "", "t", "analyst", T0
        )
    periods = [(None, None), (T0 - timedelta(days=30), None), (T0 - timedelta(hours=2, minutes=17), None)]
    for _ in range(6):
        lo = T0 - timedelta(minutes=rnd.randrange(7 * 24 * 60))
        periods.append((lo, lo + timedelta(minutes=rnd.randrange(3 * 24 * 60))))
    for since, until in periods:
        for extra in ({}, {"rule_id": "p2p-a"}, {"category": "p2p", "action": "killed"}, {"triage": "open"},
                      {"triage": "escalated"}, {"triage": "triaged"}):  # fmt: skip
            flt = EventFilter(since=since, until=until, **extra)
            s = store.stats.summary(flt)
            assert s.total == _raw_total(store, flt), (since, until, extra)
            assert sum(c.count for c in s.by_host) == s.total
            assert store.stats.summary(flt, top=3).by_host == s.by_host[:3]
            for c in s.by_rule:
                assert c.count == _raw_total(
                    store, EventFilter(since=since, until=until, **{**extra, "rule_id": c.key})
                )
            for c in s.by_host[:2]:
                assert (
                    c.count
                    == store.stats.summary(EventFilter(since=since, until=until, host=c.key, **extra)).total
                )
            assert sum(d.count for d in store.stats.per_day(flt)) == s.total
    before = store.stats.summary(EventFilter())
    kept = _running(store)  # what uploads and triage kept in step, hour by hour
    with store.engine.begin() as conn:
        rebuild(conn)
    assert store.stats.summary(EventFilter()) == before
    assert _running(store) == kept and len(kept["host_totals"]) > 4
    assert len(hosts) == 4


def test_top_hosts_of_a_period_when_totals_mislead(store: Store) -> None:
    """The top hosts come from the hosts with the largest totals first; hosts loud long ago but quiet
    in the period must not hide the ones loud in it, however many there are."""
    rnd = random.Random(5)
    quiet_now = [store.hosts.enroll(machine_id=f"o{i}", hostname=f"old-{i}", node_key_hash=f"a{i:063x}",
                                    now=T0) for i in range(70)]  # fmt: skip
    loud_now = [store.hosts.enroll(machine_id=f"n{i}", hostname=f"new-{i}", node_key_hash=f"b{i:063x}",
                                   now=T0) for i in range(8)]  # fmt: skip

    def batch(n: int, ago: timedelta, rule: str) -> list[EventInsert]:
        out = []
        for _ in range(n):
            event_id = str(uuid.uuid4())
            when = T0 - ago - timedelta(minutes=rnd.randrange(600))
            out.append(EventInsert(event_id, "violation", when, {"event_id": event_id}, rule_id=rule,
                                   category="p2p", action="killed"))  # fmt: skip
        return out

    for host in quiet_now:
        store.events.insert_batch(
            host, batch(30, timedelta(days=9), "old-rule") + batch(1, timedelta(0), "r"), T0
        )
    for i, host in enumerate(loud_now):
        store.events.insert_batch(host, batch(3 + i, timedelta(hours=2), "r"), T0)
    for since in (T0 - timedelta(days=2), T0 - timedelta(hours=13, minutes=7), None):
        for extra in ({}, {"rule_id": "r"}, {"triage": "open"}):
            flt = EventFilter(since=since, **extra)
            every = store.stats.summary(flt).by_host
            for top in (1, 5, 10):
                assert store.stats.summary(flt, top=top).by_host == every[:top], (since, extra, top)
    recent = store.stats.summary(EventFilter(since=T0 - timedelta(days=2)), top=5).by_host
    assert {c.label for c in recent} == {f"new-{i}" for i in range(3, 8)}


def test_split_covers_the_period_once() -> None:
    lo = datetime(2030, 1, 1, 10, 30, tzinfo=UTC)
    hi = datetime(2030, 1, 4, 5, 15, tzinfo=UTC)
    sp = split(lo, hi)
    assert sp.days == ("2030-01-02", "2030-01-04")
    assert sp.hours == [("2030-01-01 11", "2030-01-02 00"), ("2030-01-04 00", "2030-01-04 05")]
    assert sp.raw == [(lo, datetime(2030, 1, 1, 11, tzinfo=UTC)), (datetime(2030, 1, 4, 5, tzinfo=UTC), hi)]
    assert split(None, None).days == (None, None) and split(None, None).raw == []
    inside = split(lo, lo + timedelta(minutes=20))
    assert inside.days is None and inside.hours == [] and inside.raw == [(lo, lo + timedelta(minutes=20))]


def test_concurrent_uploads_neither_deadlock_nor_lose_counts(store: Store) -> None:
    """Uploads at once, two of each host (a retry through another replica) and from two hosts
    sharing the daily rows, plus a triage: every batch is stored (no deadlock on PostgreSQL) and
    the running totals equal a rebuild from the events."""
    import threading

    hosts = [
        store.hosts.enroll(machine_id=f"m-c{i}", hostname=f"ws-c{i}", node_key_hash=f"{i:064x}", now=T0)
        for i in range(2)
    ]
    rnd = random.Random(5)

    def batch() -> list[EventInsert]:
        out = []
        for _ in range(40):
            event_id = str(uuid.uuid4())
            when = T0 - timedelta(hours=rnd.randrange(48))
            rule, category = rnd.choice(RULES)
            out.append(EventInsert(event_id, "violation", when, {"event_id": event_id}, rule_id=rule,
                                   category=category, action=rnd.choice(ACTIONS)))  # fmt: skip
        return out

    first = batch()
    store.events.insert_batch(hosts[0], first, T0)
    batches = [batch() for _ in range(16)]
    start = threading.Barrier(5)
    errors: list[BaseException] = []

    def run(work: object) -> None:
        start.wait()
        try:
            work()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    def upload(i: int) -> None:
        for b in batches[i::4]:
            store.events.insert_batch(hosts[i % 2], b, T0)
            store.events.insert_batch(hosts[i % 2], list(reversed(b)), T0)  # the same ids again

    def triage() -> None:
        for ev in first[:10]:
            store.events.set_triage([(hosts[0], ev.event_id)], "acknowledged", "n", "t", "analyst", T0)

    threads = [threading.Thread(target=run, args=(lambda i=i: upload(i),)) for i in range(4)]
    threads.append(threading.Thread(target=run, args=(triage,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    kept = _running(store)
    with store.engine.begin() as conn:
        rebuild(conn)
    assert _running(store) == kept
    summary = store.stats.summary(EventFilter())
    assert summary.total == 17 * 40 and summary.open == 17 * 40 - 10


def _rollup_rows(store: Store) -> dict[str, dict[tuple[object, ...], list[float]]]:
    """Every rollup table's rows, the stop seconds apart: SQLite's rebuild computes them from
    julianday, which keeps milliseconds (the count `n` ends the key)."""
    out = {}
    with store.engine.connect() as conn:
        for table in (violation_daily, violation_hourly, host_daily, host_running, host_totals):
            out[table.name] = {
                tuple(v for v in row if not isinstance(v, float)): [v for v in row if isinstance(v, float)]
                for row in conn.execute(sa.select(table))
            }
    return out


def test_uploads_keep_every_rollup_as_a_rebuild_gives_it(store: Store) -> None:
    """Batch after batch of one host, each reaching hours before, between and after the hours
    stored so far (and across days), stopped and reported alike, with retried ids and agent
    events mixed in: every rollup (counts by day and hour, by host and day, running totals by
    host and hour, totals) equals a rebuild from the events. On PostgreSQL the rollups are kept
    by the statement that inserts the batch."""
    rnd = random.Random(11)
    hosts = [
        store.hosts.enroll(machine_id=f"m-r{i}", hostname=f"ws-r{i}", node_key_hash=f"c{i:063x}", now=T0)
        for i in range(2)
    ]
    sent: dict[str, list[EventInsert]] = {host: [] for host in hosts}
    for n in range(8):
        host = hosts[n % 2]
        batch = []
        for _ in range(rnd.randrange(1, 30)):
            event_id = str(uuid.uuid4())
            when = T0 - timedelta(hours=rnd.randrange(72), minutes=rnd.randrange(60))
            when -= timedelta(microseconds=rnd.randrange(10**6))
            rule, category = rnd.choice(RULES)
            action = rnd.choice(ACTIONS)
            first = when - timedelta(seconds=rnd.randrange(100), microseconds=rnd.randrange(10**6))
            first_seen = rnd.choice([first, None, when + timedelta(seconds=1)])
            batch.append(EventInsert(event_id, "violation", when, {"event_id": event_id}, rule_id=rule,
                                     category=category, action=action, first_seen=first_seen))  # fmt: skip
        event_id = str(uuid.uuid4())
        batch.append(EventInsert(event_id, "agent", T0, {"event_id": event_id}, type="events_dropped"))
        batch += rnd.sample(sent[host], min(len(sent[host]), 3))  # retried: counted once
        stored = store.events.insert_batch(host, batch, T0)
        assert {ev.event_id for ev in stored} == {ev.event_id for ev in batch} - {
            ev.event_id for ev in sent[host]
        }
        sent[host] += [ev for ev in stored if ev.kind == "violation"]
    kept = _rollup_rows(store)
    with store.engine.begin() as conn:
        rebuild(conn)
    rebuilt = _rollup_rows(store)
    for name, rows in kept.items():
        assert rows.keys() == rebuilt[name].keys(), name
        for key, stop in rows.items():
            assert stop == pytest.approx(rebuilt[name][key], abs=1e-3 * key[-1]), (name, key)  # type: ignore[operator]
    assert store.stats.summary(EventFilter()).total == sum(len(v) for v in sent.values())
