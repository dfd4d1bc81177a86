"""Group commit of enrollments, on SQLite and PostgreSQL: enrollments queued together are decided
in order as lone ones would be and written in one transaction; a failed batch fails every request
in it and stores none; the queue is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from endpoint_agent.errors import StoreError
from server_stub.enrollbatch import EnrollBatcher, EnrollmentsBusy
from server_stub.store import EnrollRefused, Store
from server_stub.store.hosts import Enrollment
from server_stub.store.tables import cache_changes, hosts
from tests.support.poison import poison_hostname

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def key(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def commits(store: Store) -> Iterator[list[int]]:
    seen: list[int] = []

    def record(_conn: Any) -> None:
        seen.append(1)

    sa.event.listen(store.engine, "commit", record)
    yield seen
    sa.event.remove(store.engine, "commit", record)


def batcher(store: Store, **kwargs: Any) -> EnrollBatcher:
    return EnrollBatcher(store.hosts.enroll_many, lambda: T0, autostart=False, **kwargs)


def together(b: EnrollBatcher, items: list[Enrollment]) -> list[str | BaseException]:
    """Enroll all of these, queued before the writer starts: one batch; each outcome or error."""

    async def run() -> list[str | BaseException]:
        tasks = [asyncio.ensure_future(b.enroll(item)) for item in items]
        await asyncio.sleep(0)  # each one queued
        b.start()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    return asyncio.run(run())


def machines(store: Store) -> dict[str, tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(hosts.c.machine_id, hosts.c.host_id, hosts.c.node_key_hash)).all()
    return {r.machine_id: (r.host_id, r.node_key_hash) for r in rows}


def test_enrollments_queued_together_are_decided_in_order_in_one_transaction(
    store: Store, commits: list[int]
) -> None:
    known = store.hosts.enroll(machine_id="known", hostname="ws-known", node_key_hash=key(1), now=T0)
    forgotten: list[str] = []
    store.hosts.on_key_change.append(forgotten.append)
    commits.clear()
    b = batcher(store)
    outcomes = together(
        b,
        [
            Enrollment("m1", "ws-1", key(11)),
            Enrollment("m2", "ws-2", key(12)),
            Enrollment("m1", "ws-1-again", key(13)),  # m1 is known by now: no key, refused
            Enrollment("m2", "ws-2b", key(14), current_key_hash=key(12)),  # its first key: rotated
            Enrollment("known", "ws-evil", key(15), current_key_hash=key(99)),  # wrong key
            Enrollment("known", "ws-known-2", key(16), current_key_hash=key(1)),  # a rotation
        ],
    )
    b.stop()
    assert len(commits) == 1
    m1, m2 = outcomes[0], outcomes[1]
    assert isinstance(m1, str) and isinstance(m2, str) and m1 != m2
    assert isinstance(outcomes[2], EnrollRefused) and isinstance(outcomes[4], EnrollRefused)
    assert outcomes[3] == m2 and outcomes[5] == known
    stored = machines(store)
    assert stored == {"m1": (m1, key(11)), "m2": (m2, key(14)), "known": (known, key(16))}
    assert store.hosts.by_key(key(1)) is None and store.hosts.by_key(key(12)) is None
    by_new_key = store.hosts.by_key(key(16))
    assert by_new_key is not None and by_new_key.hostname == "ws-known-2"
    # The rotated host (and only it: new hosts had no key to forget) is in the change feed.
    with store.engine.connect() as conn:
        feed = conn.execute(sa.select(cache_changes.c.kind, cache_changes.c.subject)).all()
    assert [tuple(r) for r in feed] == [("host", known)]
    assert forgotten == [known]


def test_a_failed_batch_fails_each_request_and_stores_none(store: Store, db_url: str) -> None:
    store.hosts.enroll(machine_id="known", hostname="ws-known", node_key_hash=key(1), now=T0)
    poison_hostname(db_url, "poison")
    b = batcher(store)
    items = [Enrollment(f"m{n}", f"ws-{n}", key(10 + n)) for n in range(3)]
    items.append(Enrollment("known", "ws-known-2", key(20), current_key_hash=key(1)))
    items.append(Enrollment("bad", "poison", key(30)))
    for outcome in together(b, items):
        assert isinstance(outcome, StoreError) and "enrolling hosts" in str(outcome)
    assert set(machines(store)) == {"known"}
    assert store.hosts.by_key(key(1)) is not None  # the rotation in the batch was undone too
    # The writer goes on: the next batch is written.
    assert isinstance(asyncio.run(b.enroll(Enrollment("m9", "ws-9", key(40)))), str)
    b.stop()
    assert set(machines(store)) == {"known", "m9"}


def test_the_queue_is_bounded_and_stop_answers_what_waits(store: Store) -> None:
    b = batcher(store, max_queue=2)

    async def run() -> list[str | BaseException]:
        waiting = [asyncio.ensure_future(b.enroll(Enrollment(f"m{n}", f"ws-{n}", key(n)))) for n in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(EnrollmentsBusy):
            await b.enroll(Enrollment("m3", "ws-3", key(3)))
        b.stop()  # never started: nobody writes them, each is answered
        with pytest.raises(EnrollmentsBusy):
            await b.enroll(Enrollment("m4", "ws-4", key(4)))
        return list(await asyncio.gather(*waiting, return_exceptions=True))

    assert all(isinstance(outcome, EnrollmentsBusy) for outcome in asyncio.run(run()))
    assert machines(store) == {}


def test_a_request_given_up_before_its_batch_is_not_written(store: Store) -> None:
    b = batcher(store)

    async def run() -> str:
        gone = asyncio.ensure_future(b.enroll(Enrollment("gone", "ws-gone", key(1))))
        kept = asyncio.ensure_future(b.enroll(Enrollment("kept", "ws-kept", key(2))))
        await asyncio.sleep(0)
        gone.cancel()  # its client left
        await asyncio.sleep(0)
        b.start()
        return await kept

    assert isinstance(asyncio.run(run()), str)
    b.stop()
    assert set(machines(store)) == {"kept"}


def test_a_lone_enrollment_waits_for_no_batch(store: Store) -> None:
    b = EnrollBatcher(store.hosts.enroll_many, lambda: T0)  # started by its first request
    host_id = asyncio.run(b.enroll(Enrollment("m1", "ws-1", key(1))))
    b.stop()
    assert machines(store) == {"m1": (host_id, key(1))}


def test_distinct_machines_are_inserted_without_a_lookup_and_known_ones_decided_as_known(
    store: Store, commits: list[int]
) -> None:
    known = store.hosts.enroll(machine_id="known", hostname="ws-known", node_key_hash=key(1), now=T0)
    other = store.hosts.enroll(machine_id="other", hostname="ws-other", node_key_hash=key(2), now=T0)
    reset = store.hosts.enroll(machine_id="reset", hostname="ws-reset", node_key_hash=key(3), now=T0)
    store.hosts.reset(reset, T0)
    feed_before = _feed(store)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    commits.clear()
    try:
        b = batcher(store)
        fresh = together(b, [Enrollment(f"new{n}", f"ws-new{n}", key(10 + n)) for n in range(5)])
        first_batch = list(statements)
        mixed = together(
            b,
            [
                Enrollment("new9", "ws-new9", key(19)),
                Enrollment("known", "ws-known-2", key(20), current_key_hash=key(1)),  # a rotation
                Enrollment("other", "ws-evil", key(21), current_key_hash=key(99)),  # wrong key
                Enrollment("reset", "ws-reset-2", key(22)),  # opened by the admin's reset
            ],
        )
        b.stop()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert len(commits) == 2  # one transaction per batch
    assert all(isinstance(h, str) for h in fresh) and len(set(fresh)) == 5
    if store.engine.dialect.name == "postgresql":  # the batch of new machines: one statement
        assert len(first_batch) == 1 and first_batch[0].startswith("INSERT INTO hosts"), first_batch
    assert isinstance(mixed[0], str) and mixed[1] == known and mixed[3] == reset
    assert isinstance(mixed[2], EnrollRefused)
    stored = machines(store)
    assert stored["new9"] == (mixed[0], key(19)) and stored["known"] == (known, key(20))
    assert stored["other"] == (other, key(2)) and stored["reset"] == (reset, key(22))
    assert all(stored[f"new{n}"] == (fresh[n], key(10 + n)) for n in range(5))
    assert sorted(_feed(store)[len(feed_before) :]) == sorted([("host", known), ("host", reset)])


def _feed(store: Store) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(cache_changes.c.kind, cache_changes.c.subject).order_by(cache_changes.c.seq)
        ).all()
    return [(r.kind, r.subject) for r in rows]
