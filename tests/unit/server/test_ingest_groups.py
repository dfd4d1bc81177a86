"""Uploads stored as a group (store/events.py insert_uploads; PostgreSQL: one transaction, one
statement for every host's rows and the rollups): each upload learns exactly what a lone upload
in that order would have stored, an upload that cannot be stored fails alone, the rollups equal a
rebuild, and every host's lock is taken in sorted order (no deadlock with triage or other writers).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from endpoint_agent.errors import StoreError
from server_stub.ingestgroup import INGEST_GROUP_ENV, UploadsBusy, upload_groups
from server_stub.store import EventFilter, EventInsert, Store, rollup
from server_stub.store.engine import advisory_key
from server_stub.store.events import Upload
from server_stub.store.tables import events, host_daily, violation_daily, violation_hourly
from tests.unit.server.test_rollup import ACTIONS, RULES, _rollup_rows

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def _hosts(store: Store, n: int, tag: str = "g") -> list[str]:
    return [
        store.hosts.enroll(
            machine_id=f"m-{tag}{i}", hostname=f"ws-{tag}{i}", node_key_hash=f"{tag}{i:063x}"[-64:], now=T0
        )
        for i in range(n)
    ]


def _ev(
    rnd: random.Random | None = None, event_id: str | None = None, kind: str = "violation"
) -> EventInsert:
    rnd = rnd or random.Random()
    event_id = event_id or str(uuid.uuid4())
    if kind == "agent":
        return EventInsert(event_id, "agent", T0, {"event_id": event_id}, type="events_dropped")
    when = T0 - timedelta(
        hours=rnd.randrange(72), minutes=rnd.randrange(60), microseconds=rnd.randrange(10**6)
    )
    rule, category = rnd.choice(RULES)
    first = rnd.choice([None, when - timedelta(seconds=rnd.randrange(100))])
    return EventInsert(event_id, "violation", when, {"event_id": event_id}, rule_id=rule, category=category,
                       action=rnd.choice(ACTIONS), first_seen=first)  # fmt: skip


def _ids(outcome: list[EventInsert] | StoreError) -> list[str]:
    assert not isinstance(outcome, Exception), outcome
    return [ev.event_id for ev in outcome]


def _stored(store: Store) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.select(events.c.host_id, events.c.event_id).order_by(events.c.id))
        ]  # type: ignore[misc]


def _as_rebuilt(store: Store) -> None:
    """Every rollup as a rebuild from the events gives it (stop seconds summed in another order;
    triage leaves a count it moved away at 0, a rebuild has no such row)."""
    counts = {t.name for t in (violation_daily, violation_hourly, host_daily)}

    def rows() -> dict[str, dict[tuple[object, ...], list[float]]]:
        return {
            name: {k: v for k, v in table.items() if name not in counts or k[-1] != 0}
            for name, table in _rollup_rows(store).items()
        }

    kept = rows()
    with store.engine.begin() as conn:
        rollup.rebuild(conn)
    rebuilt = rows()
    for name, rows in kept.items():
        assert rows.keys() == rebuilt[name].keys(), name
        for key, stop in rows.items():
            assert stop == pytest.approx(rebuilt[name][key], abs=1e-3 * key[-1]), (name, key)  # type: ignore[operator]


def test_each_upload_of_a_group_learns_its_own_new_ids_exactly_once(store: Store) -> None:
    _learns_own_ids(store, lambda uploads: store.events.insert_uploads(uploads, T0))


Insert = Callable[[list[Upload]], list[list[EventInsert] | StoreError]]


def _learns_own_ids(store: Store, insert: Insert) -> None:
    h1, h2 = _hosts(store, 2)
    a, b, c, d = (_ev(random.Random(i)) for i in range(4))
    assert _ids(insert([Upload(h1, [c])])[0]) == [c.event_id]
    outcomes = insert(
        [
            Upload(h1, [a, b, a]),  # a twice inside one upload
            Upload(h2, [a]),  # the same id from another host is another event
            Upload(h1, [b, c, d]),  # b: the first upload's; c: stored before
            Upload(h1, [a, d]),  # all carried earlier in the group
            Upload(h2, []),
        ]
    )
    assert [_ids(o) for o in outcomes] == [[a.event_id, b.event_id], [a.event_id], [d.event_id], [], []]
    # Stored once each, in upload order.
    assert _stored(store) == [
        (h1, c.event_id),
        (h1, a.event_id),
        (h1, b.event_id),
        (h2, a.event_id),
        (h1, d.event_id),
    ]
    # The same group again (every upload retried): nothing is new.
    again = insert([Upload(h1, [a, b]), Upload(h2, [a]), Upload(h1, [d])])
    assert [_ids(o) for o in again] == [[], [], []]
    assert store.stats.summary(EventFilter()).total == 5


def test_an_upload_of_an_unknown_host_fails_alone(store: Store) -> None:
    (h1,) = _hosts(store, 1)
    a, b = _ev(random.Random(1)), _ev(random.Random(2))
    outcomes = store.events.insert_uploads(
        [Upload(h1, [a]), Upload("no-such-host", [b]), Upload(h1, [b])], T0
    )
    assert _ids(outcomes[0]) == [a.event_id] and _ids(outcomes[2]) == [b.event_id]
    assert isinstance(outcomes[1], StoreError)
    assert _stored(store) == [(h1, a.event_id), (h1, b.event_id)]


@pytest.mark.postgres
def test_an_upload_the_database_refuses_fails_alone_and_the_others_are_stored(pg_store: Store) -> None:
    h1, h2 = _hosts(pg_store, 2)
    good = [_ev(random.Random(i)) for i in range(3)]
    poisoned = _ev(random.Random(9), event_id="x" * 80)  # longer than the column: PostgreSQL refuses it
    outcomes = pg_store.events.insert_uploads(
        [Upload(h1, [good[0]]), Upload(h2, [good[1], poisoned]), Upload(h1, [good[2]])], T0
    )
    assert _ids(outcomes[0]) == [good[0].event_id] and _ids(outcomes[2]) == [good[2].event_id]
    assert isinstance(outcomes[1], StoreError)
    assert _stored(pg_store) == [
        (h1, good[0].event_id),
        (h1, good[2].event_id),
    ]  # none of the poisoned upload
    _as_rebuilt(pg_store)


def test_grouped_uploads_keep_every_rollup_as_a_rebuild_gives_it(store: Store) -> None:
    """Groups of uploads from several hosts (a host twice in a group, retried ids, agent events,
    hours before and after the ones stored): every rollup equals a rebuild from the events."""
    rnd = random.Random(17)
    hosts = _hosts(store, 4)
    sent: dict[str, list[EventInsert]] = {h: [] for h in hosts}
    for _ in range(6):
        group = []
        for _ in range(rnd.randrange(2, 7)):
            host = rnd.choice(hosts)
            batch = [_ev(rnd) for _ in range(rnd.randrange(1, 20))] + [_ev(rnd, kind="agent")]
            batch += rnd.sample(sent[host], min(3, len(sent[host])))
            sent[host] += [ev for ev in batch if ev.kind == "violation" and ev not in sent[host]]
            group.append(Upload(host, batch))
        store.events.insert_uploads(group, T0)
    _as_rebuilt(store)
    assert store.stats.summary(EventFilter()).total == sum(len(v) for v in sent.values())


def _holders(store: Store, keys: dict[int, str]) -> set[str]:
    """Which of these hosts' advisory locks are held (granted) now."""
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted"
        )
        return {keys[k] for (k,) in rows if k in keys}


@pytest.mark.postgres
def test_a_group_takes_its_hosts_locks_in_sorted_order(pg_store: Store) -> None:
    """A group of hosts [c, a, b] while b's lock is held elsewhere: it holds a's and waits for b's,
    c's not taken yet -- the order every writer (lock_hosts: triage, SQLite's path) takes them in."""
    a, b, c = sorted(_hosts(pg_store, 3))
    keys = {advisory_key("endpoint-server:host:" + h): h for h in (a, b, c)}
    done: list[object] = []
    with pg_store.engine.begin() as holder:
        rollup.lock_hosts(holder, [b])
        writer = threading.Thread(
            target=lambda: done.append(
                pg_store.events.insert_uploads(
                    [Upload(c, [_ev()]), Upload(a, [_ev()]), Upload(b, [_ev()])], T0
                )
            )
        )
        writer.start()
        deadline = time.monotonic() + 30
        while _holders(pg_store, keys) != {a, b} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _holders(pg_store, keys) == {a, b}  # a's (the group's) and b's (ours): c's waits behind b
        assert not done
    writer.join(30)
    assert done and all(len(_ids(o)) == 1 for o in done[0])  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_groups_single_uploads_and_triage_at_once_neither_deadlock_nor_lose_counts(pg_store: Store) -> None:
    """Writers at once on one database: groups of hosts in every order (each with retried ids),
    lone uploads and triage of stored violations: all stored, no deadlock, totals equal a rebuild."""
    hosts = _hosts(pg_store, 5)
    rnd = random.Random(23)
    first = [_ev(rnd) for _ in range(20)]
    pg_store.events.insert_batch(hosts[0], first, T0)
    work: list[list[Upload]] = []
    for _ in range(12):
        group = [Upload(h, [_ev(rnd) for _ in range(10)]) for h in rnd.sample(hosts, rnd.randrange(2, 6))]
        work.append(group + [Upload(u.host_id, list(reversed(u.rows))) for u in group[:1]])
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(fn: object) -> None:
        start.wait()
        try:
            fn()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    def groups(i: int) -> None:
        for group in work[i::2]:
            for outcome in pg_store.events.insert_uploads(group, T0):
                assert not isinstance(outcome, Exception), outcome

    def lone() -> None:
        for group in work[:6]:
            for u in group:
                pg_store.events.insert_batch(u.host_id, u.rows, T0)

    def triage() -> None:
        for ev in first[:10]:
            pg_store.events.set_triage([(hosts[0], ev.event_id)], "acknowledged", "n", "t", "analyst", T0)

    threads = [
        threading.Thread(target=run, args=(f,)) for f in (lambda: groups(0), lambda: groups(1), lone, triage)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    _as_rebuilt(pg_store)
    summary = pg_store.stats.summary(EventFilter())
    distinct = {(u.host_id, ev.event_id) for g in work for u in g for ev in u.rows}
    assert summary.total == 20 + len(distinct) and summary.open == summary.total - 10


def test_uploads_are_grouped_on_postgresql_only(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite has one writer anyway: each upload its own transaction, as before.
    grouped = upload_groups(store, lambda: T0, autostart=False)
    assert (grouped is not None) == (store.engine.dialect.name == "postgresql")
    monkeypatch.setenv(INGEST_GROUP_ENV, "off")
    assert upload_groups(store, lambda: T0, autostart=False) is None


@pytest.mark.postgres
def test_uploads_queued_together_are_one_transaction_each_answered_alone(pg_store: Store) -> None:
    h1, h2 = _hosts(pg_store, 2)
    a, b, c = (_ev(random.Random(i)) for i in range(3))
    commits: list[int] = []

    def record(_conn: Any) -> None:
        commits.append(1)

    groups = upload_groups(pg_store, lambda: T0, max_queue=4, autostart=False)
    assert groups is not None

    async def run() -> list[Any]:
        uploads = [Upload(h1, [a, b]), Upload(h2, [a]), Upload("no-such-host", [c]), Upload(h1, [b, c])]
        tasks = [asyncio.ensure_future(groups.submit(u)) for u in uploads]
        await asyncio.sleep(0)  # each one queued
        with pytest.raises(UploadsBusy):  # the queue is full: refused at once, nothing stored
            await groups.submit(Upload(h2, [c]))
        groups.start()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    sa.event.listen(pg_store.engine, "commit", record)
    try:
        outcomes = asyncio.run(run())
    finally:
        sa.event.remove(pg_store.engine, "commit", record)
        groups.stop()
    assert len(commits) == 1  # one transaction for the group
    assert [_ids(o) for o in (outcomes[0], outcomes[1], outcomes[3])] == [
        [a.event_id, b.event_id],
        [a.event_id],
        [c.event_id],
    ]
    assert isinstance(outcomes[2], StoreError)
    assert _stored(pg_store) == [(h1, a.event_id), (h1, b.event_id), (h2, a.event_id), (h1, c.event_id)]


# --- a writer's held connection (ingestgroup.HeldConnections; EventRepo.insert_uploads(held=...)) ---


@pytest.mark.postgres
def test_a_held_connection_stores_a_group_as_a_pooled_one_does(pg_store: Store) -> None:
    """Through a writer's own connection (BEGIN, locks and insert pipelined): the same outcomes,
    an unknown host's upload failing alone (the pipelined try rolled back, nothing of it kept),
    and rollups equal to a rebuild."""
    with pg_store.engine.connect() as held:
        _learns_own_ids(pg_store, lambda uploads: pg_store.events.insert_uploads(uploads, T0, held=held))
        (h3,) = _hosts(pg_store, 1, tag="u")
        e, f = _ev(random.Random(5)), _ev(random.Random(6))
        outcomes = pg_store.events.insert_uploads(
            [Upload(h3, [e]), Upload("no-such-host", [f]), Upload(h3, [f])], T0, held=held
        )
        assert _ids(outcomes[0]) == [e.event_id] and _ids(outcomes[2]) == [f.event_id]
        assert isinstance(outcomes[1], StoreError)
    assert _stored(pg_store)[-2:] == [(h3, e.event_id), (h3, f.event_id)]
    assert all(host != "no-such-host" for host, _ in _stored(pg_store))
    _as_rebuilt(pg_store)


def _backend(conn: sa.Connection) -> int:
    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    conn.rollback()
    return int(pid)


@pytest.mark.postgres
def test_a_group_refused_on_a_held_connection_fails_alone_and_the_next_reconnects(pg_store: Store) -> None:
    h1, h2 = _hosts(pg_store, 2)
    good = [_ev(random.Random(i)) for i in range(4)]
    poisoned = _ev(random.Random(9), event_id="x" * 80)  # longer than the column: PostgreSQL refuses it
    with pg_store.engine.connect() as held:
        outcomes = pg_store.events.insert_uploads(
            [Upload(h1, [good[0]]), Upload(h2, [good[1], poisoned]), Upload(h1, [good[2]])], T0, held=held
        )
        assert _ids(outcomes[0]) == [good[0].event_id] and _ids(outcomes[2]) == [good[2].event_id]
        assert isinstance(outcomes[1], StoreError)
        assert held.invalidated  # it saw an error: not trusted again as it was
        assert _ids(pg_store.events.insert_uploads([Upload(h2, [good[3]])], T0, held=held)[0]) == [
            good[3].event_id
        ]
        assert not held.invalidated  # reconnected by its next use
    assert _stored(pg_store) == [(h1, good[0].event_id), (h1, good[2].event_id), (h2, good[3].event_id)]
    _as_rebuilt(pg_store)


@pytest.mark.postgres
def test_a_held_connection_whose_backend_was_ended_loses_no_upload(pg_store: Store) -> None:
    """The database ended the writer's connection (a restart, an idle timeout): the next group is
    stored anyway (again, upload by upload, on pooled connections), exactly once, and the writer's
    connection is a new one afterwards."""
    (h1,) = _hosts(pg_store, 1)
    a, b, c = (_ev(random.Random(i)) for i in range(3))
    with pg_store.engine.connect() as held:
        assert _ids(pg_store.events.insert_uploads([Upload(h1, [a])], T0, held=held)[0]) == [a.event_id]
        pid = _backend(held)
        with pg_store.engine.connect() as admin:
            assert admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar_one()
        outcomes = pg_store.events.insert_uploads([Upload(h1, [a, b])], T0, held=held)
        assert _ids(outcomes[0]) == [b.event_id]
        assert _ids(pg_store.events.insert_uploads([Upload(h1, [c])], T0, held=held)[0]) == [c.event_id]
        assert _backend(held) != pid
    assert _stored(pg_store) == [(h1, a.event_id), (h1, b.event_id), (h1, c.event_id)]


@pytest.mark.postgres
def test_upload_writers_take_no_pooled_connection_per_group(pg_store: Store) -> None:
    """Each writer thread keeps one connection for its groups, and gives it back when stopped."""
    hosts = _hosts(pg_store, 3)
    checkouts: list[int] = []

    def checkout(*_args: Any) -> None:
        checkouts.append(1)

    groups = upload_groups(pg_store, lambda: T0)
    assert groups is not None
    sa.event.listen(pg_store.engine, "checkout", checkout)
    try:
        sent = [Upload(hosts[n % 3], [_ev(random.Random(n))]) for n in range(12)]
        for upload in sent:  # one after the other: twelve groups
            assert _ids(groups.submit_wait(upload)) == [upload.rows[0].event_id]
    finally:
        groups.stop()
        sa.event.remove(pg_store.engine, "checkout", checkout)
    assert len(checkouts) <= 2  # one per writer thread at most, not one per group
    assert pg_store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert len(_stored(pg_store)) == 12


# --- uploads queued undecoded (ingestgroup.Posting: decoded by the writer that takes the group) ---


class _Posting:
    """A queued upload as the writer meets it: decoded to `upload`, or nothing to store (None),
    or failing to decode (`fails`)."""

    def __init__(self, upload: Upload | None, fails: bool = False) -> None:
        self._upload, self._fails = upload, fails
        self.stored: list[EventInsert] | None = None

    def upload(self) -> Upload | None:
        if self._fails:
            raise ValueError("cannot decode this one")
        return self._upload

    def acked(self, stored: list[EventInsert]) -> list[str]:
        self.stored = stored
        return [ev.event_id for ev in self._upload.rows] if self._upload else []


@pytest.mark.postgres
def test_uploads_queued_undecoded_are_decoded_by_the_writer_each_answered_alone(pg_store: Store) -> None:
    """One group: a body the route must answer (None), one that fails to decode (its error alone),
    an unknown host (its StoreError alone), an Upload queued decoded (stored as it is) and the rest
    stored in the group's one transaction, each learning what it stored."""
    h1, h2 = _hosts(pg_store, 2)
    a, b, c = (_ev(random.Random(i)) for i in range(3))
    good = _Posting(Upload(h1, [a, b]))
    retried = _Posting(Upload(h1, [b]))  # b is stored by `good`, earlier in the group: not new
    unknown = _Posting(Upload("no-such-host", [c]))
    queued = [good, _Posting(None), _Posting(None, fails=True), unknown, retried, Upload(h2, [c])]
    groups = upload_groups(pg_store, lambda: T0, max_queue=len(queued), autostart=False)
    assert groups is not None

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(groups.submit(q)) for q in queued]
        await asyncio.sleep(0)
        groups.start()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        outcomes = asyncio.run(run())
    finally:
        groups.stop()
    assert outcomes[0] == [a.event_id, b.event_id] and _ids(good.stored or []) == [a.event_id, b.event_id]
    assert outcomes[1] is None
    assert isinstance(outcomes[2], ValueError)
    assert isinstance(outcomes[3], StoreError)
    assert outcomes[4] == [b.event_id] and retried.stored == []
    assert _ids(outcomes[5]) == [c.event_id]
    assert _stored(pg_store) == [(h1, a.event_id), (h1, b.event_id), (h2, c.event_id)]


@pytest.mark.postgres
def test_the_counting_statement_reads_the_running_totals_through_their_index(pg_store: Store) -> None:
    """An upload's statement looks up its hosts' running totals by key: with 20,000 of them stored
    no step reads host_running whole. (Its keys once carried another collation than the table's
    index: every upload read the table through, seconds each at a fleet's size.)"""
    from server_stub.store import bulk

    (host,) = _hosts(pg_store, 1)
    rows = [_ev(random.Random(n)) for n in range(20)]
    with pg_store.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO host_running (scope, host_id, hour, n_all, n_open) "
            "SELECT s, 'other-' || h, to_char(timestamp '2030-01-01' + make_interval(hours => k), "
            "'YYYY-MM-DD HH24'), k, k FROM unnest(ARRAY['', 'p2p-a']) s, generate_series(1, 2500) h, "
            "generate_series(1, 4) k"
        )
        conn.exec_driver_sql("ANALYZE host_running")
        statement = bulk.hosts_insert(
            conn, [host] * len(rows), rows, T0, with_inserted=rollup.COUNT_NEW,
            with_params=rollup.new_counts([host] * len(rows), rows),
        )  # fmt: skip
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("EXPLAIN " + statement.sql, statement.params)
        plan = "\n".join(line for (line,) in cursor.fetchall())
    assert "host_running" in plan
    assert "Seq Scan on host_running" not in plan, plan


@pytest.mark.postgres
def test_a_writers_groups_are_planned_once_not_per_group(pg_store: Store) -> None:
    """psycopg prepares the group's statements after a few groups; PostgreSQL then runs the
    insert's generic plan instead of planning its CTEs again for every group."""
    (host,) = _hosts(pg_store, 1)
    rnd = random.Random(5)
    with pg_store.engine.connect() as held:
        for _ in range(10):
            outcomes = pg_store.events.insert_uploads([Upload(host, [_ev(rnd) for _ in range(3)])], T0, held)
            assert len(_ids(outcomes[0])) == 3
        plans = held.exec_driver_sql(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH inserted%%'"
        ).all()
        held.rollback()
    assert len(plans) == 1 and plans[0][0] > 0 and plans[0][1] == 0, plans
