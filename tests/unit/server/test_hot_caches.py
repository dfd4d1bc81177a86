"""In-memory node keys and policies, kept right across processes by the change feed.

Two Store objects on one database stand for two server processes (each with its own engine and
pool); the watcher's poll is called directly, so nothing here depends on timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from endpoint_agent.errors import StoreError
from endpoint_contract.heartbeat import Heartbeat
from server_stub.keycache import NodeKeyCache
from server_stub.policycache import PolicyCache, served_for
from server_stub.store import NodeIdentity, Store
from server_stub.store import hosts as hosts_module
from server_stub.store.engine import POOL_OVERFLOW, create_db_engine
from server_stub.watcher import CLEARED, TRUST_WINDOW, CacheWatcher
from server_stub.writebehind import HostActivity
from tests.support.server_policies import stored_policy

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def _host(host_id: str) -> NodeIdentity:
    return NodeIdentity(host_id=host_id, machine_id="m-" + host_id, hostname=host_id, enrolled_at=T0)


_policy = stored_policy


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def other(db_url: str, store: Store) -> Iterator[Store]:
    """A second 'process' on the same database (opened after `store` migrated it)."""
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


def test_a_lookup_that_raced_an_invalidation_is_not_stored() -> None:
    cache = NodeKeyCache()
    epoch = cache.epoch  # a lookup starts...
    cache.forget("h1")  # ...the key changes meanwhile...
    cache.put("d1", _host("h1"), epoch)  # ...and its (old) answer arrives: not kept
    assert cache.get("d1") == (False, None)
    cache.put("d1", _host("h1"), cache.epoch)
    assert cache.get("d1") == (True, _host("h1"))
    cache.forget("h1")
    assert cache.get("d1") == (False, None)


def test_both_maps_are_bounded() -> None:
    cache = NodeKeyCache(capacity=3, unknown_capacity=5)
    for i in range(100):
        cache.put(f"unknown-{i}", None, cache.epoch)
        cache.put(f"d{i}", _host(f"h{i}"), cache.epoch)
    assert len(cache) == 3 and len(cache._unknown) == 5 and len(cache._digest_of) == 3
    assert cache.get("d99")[1] == _host("h99") and cache.get("d0") == (False, None)
    assert cache.get("unknown-99") == (True, None) and cache.get("unknown-0") == (False, None)
    cache.put("d-new", _host("h99"), cache.epoch)  # a rotated key replaces the old digest
    assert cache.get("d99") == (False, None) and cache.get("d-new")[1] == _host("h99")


def test_nothing_is_answered_from_memory_while_untrusted() -> None:
    trusted = [True]
    cache = NodeKeyCache(fresh=lambda: trusted[0])
    cache.put("d1", _host("h1"), cache.epoch)
    trusted[0] = False
    assert cache.get("d1") == (False, None)


def test_a_reset_in_one_process_reaches_the_other_at_its_next_poll(store: Store, other: Store) -> None:
    host_id = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    keys = NodeKeyCache()
    watcher = CacheWatcher(other.changes, keys, PolicyCache(other.policies), lambda: T0)
    watcher.start_reading()
    host = other.hosts.by_key("a" * 64)
    keys.put("a" * 64, host, keys.epoch)
    watcher.poll()
    assert keys.get("a" * 64) == (True, host)  # nothing changed: still answered from memory
    store.hosts.reset(host_id, T0)
    assert keys.get("a" * 64) == (True, host)  # the other process has not polled yet
    watcher.poll()
    assert keys.get("a" * 64) == (False, None)
    # A rotation (re-enroll with the current key) drops the old key too.
    again = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="b" * 64, now=T0)
    keys.put("b" * 64, other.hosts.by_key("b" * 64), keys.epoch)
    store.hosts.enroll(
        machine_id="m1", hostname="ws-1", node_key_hash="c" * 64, now=T0, current_key_hash="b" * 64
    )
    watcher.poll()
    assert again == host_id and keys.get("b" * 64) == (False, None)


def test_the_caches_are_distrusted_when_the_feed_goes_unread(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = _Clock()
    keys = NodeKeyCache()
    policies = PolicyCache(store.policies)
    watcher = CacheWatcher(store.changes, keys, policies, lambda: T0, monotonic=clock)
    keys.fresh = policies.fresh = watcher.fresh
    watcher.start_reading()
    keys.put("a" * 64, _host("h1"), keys.epoch)
    policies.refresh()
    assert keys.get("a" * 64)[0] and policies.peek() == ()
    clock.t += TRUST_WINDOW + 0.1  # the database was unreachable for a while
    assert keys.get("a" * 64) == (False, None) and policies.peek() is None
    watcher.poll()  # read again: everything remembered from before is dropped, and said so
    assert keys.get("a" * 64) == (False, None) and len(keys) == 0
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith(CLEARED)]
    assert len(told) == 1 and f"not read for {TRUST_WINDOW + 0.1:.1f} s" in told[0]
    watcher.poll()  # read in time: nothing cleared, nothing said
    assert len([r for r in caplog.records if r.getMessage().startswith(CLEARED)]) == 1


def test_policies_served_from_memory_follow_changes_made_elsewhere(store: Store, other: Store) -> None:
    policies = PolicyCache(other.policies)
    watcher = CacheWatcher(other.changes, NodeKeyCache(), policies, lambda: T0)
    watcher.start_reading()
    assert policies.current() == ()
    store.policies.publish(_policy(1), T0)
    assert policies.peek() == ()  # not seen yet
    watcher.poll()
    assert [r.version for r in policies.peek() or ()] == [1]
    store.policies.publish(_policy(2, rollout=0), T0)
    store.policies.publish(_policy(3, rollout=0), T0)
    watcher.poll()
    # Down to the first version at 100%: nothing older can ever be chosen.
    assert [(r.version, r.percent) for r in policies.peek() or ()] == [(3, 0), (2, 0), (1, 100)]
    hosts = [f"host-{i}" for i in range(200)]
    store.policies.set_rollout(40)
    watcher.poll()
    held = policies.peek() or ()
    for h in hosts:  # the same choice as the database path
        assert served_for(h, held).version == store.policies.for_host(h).version  # type: ignore[union-attr]
    chosen = {served_for(h, held).version for h in hosts}  # type: ignore[union-attr]
    assert chosen == {1, 3}  # 40% of 200 hosts on version 3, the others still on 1


def test_a_publish_in_this_process_is_served_at_once(store: Store) -> None:
    policies = PolicyCache(store.policies)
    store.policies.on_change.append(policies.refresh)
    assert policies.current() == ()
    store.policies.publish(_policy(1), T0)
    assert [r.version for r in policies.peek() or ()] == [1]
    store.policies.publish(_policy(2), T0)
    store.policies.rollback(T0)
    assert [(r.version, r.percent) for r in policies.peek() or ()] == [(1, 100)]


def test_the_change_feed_is_pruned(store: Store) -> None:
    store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    store.hosts.reset("ws-1", T0)
    store.hosts.reset("ws-1", T0 + timedelta(minutes=20))
    assert [c.subject for c in store.changes.since(0)] == [store.hosts.get("ws-1").host_id] * 2  # type: ignore[union-attr]
    assert store.changes.prune(T0 + timedelta(minutes=10)) == 1
    assert len(store.changes.since(0)) == 1 and store.changes.newest() >= 2


def test_contact_times_and_heartbeats_are_written_in_batches(store: Store) -> None:
    ids = [
        store.hosts.enroll(machine_id=f"m{i}", hostname=f"ws-{i}", node_key_hash=f"{i:064x}", now=T0)
        for i in range(5)
    ]
    activity = HostActivity(store.hosts)
    later = T0 + timedelta(minutes=1)
    for host_id in ids:
        activity.seen(host_id, later)
    beat = Heartbeat.model_validate(
        {"agent_version": "9.9", "mode": "enforce", "counters": {"queue_pending": 3}}
    )
    activity.heartbeat(ids[0], beat, later + timedelta(seconds=1))
    assert store.hosts.get(ids[1]).last_seen == T0  # type: ignore[union-attr]  # not yet written
    activity.flush()
    assert activity.pending() == 0
    assert all(store.hosts.get(h).last_seen == later for h in ids[1:])  # type: ignore[union-attr]
    first = store.hosts.get(ids[0])
    assert first is not None and first.agent_version == "9.9" and first.counters == {"queue_pending": 3}
    assert first.last_seen == first.heartbeat_at == later + timedelta(seconds=1)
    activity.seen(ids[1], T0)  # an older time (another process wrote a newer one): never moves back
    activity.flush()
    assert store.hosts.get(ids[1]).last_seen == later  # type: ignore[union-attr]


def test_a_host_whose_last_contact_was_its_heartbeat_is_written_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [
        store.hosts.enroll(machine_id=f"m{i}", hostname=f"ws-{i}", node_key_hash=f"{i:064x}", now=T0)
        for i in range(3)
    ]
    touched: list[dict[str, datetime]] = []
    touch_many = store.hosts.touch_many

    def recording(seen: dict[str, datetime]) -> None:
        touched.append(dict(seen))
        touch_many(seen)

    monkeypatch.setattr(store.hosts, "touch_many", recording)
    activity = HostActivity(store.hosts, interval=3600.0)
    beat = Heartbeat.model_validate({"agent_version": "9.9", "mode": "enforce"})
    t1, t2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    activity.heartbeat(ids[0], beat, t1)  # its heartbeat was its last contact
    activity.seen(ids[1], t1)  # a poll only
    activity.heartbeat(ids[2], beat, t1)
    activity.seen(ids[2], t2)  # a poll after its heartbeat
    activity.flush()
    assert touched == [{ids[1]: t1, ids[2]: t2}]
    assert [store.hosts.get(h).last_seen for h in ids] == [t1, t1, t2]  # type: ignore[union-attr]
    assert store.hosts.get(ids[2]).heartbeat_at == t1  # type: ignore[union-attr]


def test_a_flush_in_several_statements_stores_every_field_alike_on_both_databases(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL writes a flush as one statement of arrays per batch, SQLite as executemany:
    the same rows either way, every heartbeat field included, over several batches."""
    monkeypatch.setattr(hosts_module, "_BATCH", 2)
    ids = [
        store.hosts.enroll(machine_id=f"m{i}", hostname=f"ws-{i}", node_key_hash=f"{i:064x}", now=T0)
        for i in range(5)
    ]
    at = T0 + timedelta(minutes=2)
    scanned = datetime(2030, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))  # stored as 12:00 UTC
    beat = Heartbeat.model_validate(
        {
            "agent_version": "9.9", "policy_version": 7, "mode": "monitor", "last_scan_at": scanned,
            "counters": {"scans": 3, "kills": 1}, "circuit_state": "open", "mode_reason": "break-glass",
        }
    )  # fmt: skip
    store.hosts.heartbeat_many([(host_id, beat, at) for host_id in reversed(ids[:3])])
    store.hosts.touch_many({host_id: at + timedelta(seconds=1) for host_id in ids[2:]})
    for host_id in ids[:3]:
        got = store.hosts.get(host_id)
        assert got is not None
        assert (got.agent_version, got.policy_version, got.mode, got.circuit_state, got.mode_reason) == (
            "9.9", 7, "monitor", "open", "break-glass",
        )  # fmt: skip
        assert got.counters == {"scans": 3, "kills": 1} and got.heartbeat_at == at
        assert got.last_scan_at == T0 and got.last_scan_at.tzinfo == UTC  # type: ignore[union-attr]
    assert [store.hosts.get(h).last_seen for h in ids] == [at, at] + [at + timedelta(seconds=1)] * 3  # type: ignore[union-attr]
    with pytest.raises((StoreError, ValueError), match="naive"):
        store.hosts.touch_many({ids[0]: datetime(2030, 5, 1)})  # a naive time: refused


def test_a_flush_stores_absent_heartbeat_fields_as_null_beside_present_ones(store: Store) -> None:
    """One batch, fields present for one host and absent for the other (NULL where absent, on
    PostgreSQL a NULL element of the column's array, the version sent as text)."""
    ids = [
        store.hosts.enroll(machine_id=f"n{i}", hostname=f"ws-n{i}", node_key_hash=f"{i + 90:064x}", now=T0)
        for i in range(2)
    ]
    full = Heartbeat.model_validate(
        {"agent_version": "9.9", "policy_version": 12, "mode": "monitor", "last_scan_at": T0,
         "mode_reason": "break-glass"}
    )  # fmt: skip
    bare = Heartbeat.model_validate({"agent_version": "9.8", "mode": "enforce"})
    at = T0 + timedelta(minutes=1)
    store.hosts.heartbeat_many([(ids[0], full, at), (ids[1], bare, at)])
    got = [store.hosts.get(host_id) for host_id in ids]
    assert [(h.policy_version, h.last_scan_at, h.mode_reason) for h in got if h] == [
        (12, T0, "break-glass"), (None, None, None),
    ]  # fmt: skip
    assert [(h.agent_version, h.mode, h.heartbeat_at) for h in got if h] == [
        ("9.9", "monitor", at), ("9.8", "enforce", at),
    ]  # fmt: skip


def test_fleet_figures_include_heartbeats_held_for_a_batched_write(store: Store) -> None:
    """The overview and the report count what this process was told, as a host listing does."""
    host_id = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="1" * 64, now=T0)
    activity = HostActivity(store.hosts, interval=3600.0)  # never flushes by itself here
    store.hosts.before_read.append(activity.flush)
    beat = Heartbeat.model_validate(
        {"agent_version": "9.9", "mode": "monitor", "mode_reason": "break-glass file present"}
    )
    activity.heartbeat(host_id, beat, T0 + timedelta(seconds=5))
    fleet = store.stats.fleet(T0 + timedelta(seconds=6), 600.0, None)
    assert (fleet.monitor, fleet.held_total, fleet.reporting) == (1, 1, 1)


def test_the_pool_is_sized_to_its_threads(db_url: str) -> None:
    engine = create_db_engine(db_url, pool_size=7)
    try:
        assert engine.pool.size() == 7  # type: ignore[attr-defined]
        assert engine.pool._max_overflow == POOL_OVERFLOW  # type: ignore[attr-defined]
    finally:
        engine.dispose()
