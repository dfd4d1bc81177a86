"""The store on real databases: hosts, policy versions and rollout, events, pages, summary."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from endpoint_contract.events import Violation
from endpoint_contract.heartbeat import Heartbeat
from server_stub.errors import Conflict, NotFound
from server_stub.store import EnrollRefused, EventFilter, Store, event_insert
from tests.support.server_policies import stored_policy

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


_policy = stored_policy


def insert(store: Store, host_id: str, batch: list[Violation], hostname: str | None = None) -> None:
    store.events.insert_batch(host_id, [event_insert(v, host_id, hostname) for v in batch], T0)


def _violation(
    rule: str = "p2p", when: datetime = T0, action: str = "killed", severity: str = "medium"
) -> Violation:
    return Violation.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "detected_at": when,
            "rule_id": rule,
            "category": "p2p",
            "severity": severity,
            "action": action,
            "pid": 42,
            "process_name": "qbittorrent",
            "reason": "matched",
            "policy_version": 1,
        }
    )


def test_enroll_is_per_machine_and_rotates_the_key(store: Store) -> None:
    host_id = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    with pytest.raises(EnrollRefused):  # a known machine id without its current key
        store.hosts.enroll(machine_id="m1", hostname="evil", node_key_hash="d" * 64, now=T0)
    again = store.hosts.enroll(
        machine_id="m1", hostname="ws-1b", node_key_hash="b" * 64, now=T0, current_key_hash="a" * 64
    )
    other = store.hosts.enroll(machine_id="m2", hostname="ws-2", node_key_hash="c" * 64, now=T0)
    assert again == host_id and other != host_id
    assert store.hosts.by_key("a" * 64) is None  # the old key stopped working
    record = store.hosts.by_key("b" * 64)
    assert record is not None and record.host_id == host_id and record.hostname == "ws-1b"
    store.hosts.touch_many({host_id: T0 + timedelta(seconds=5)})
    seen = store.hosts.get(host_id)
    assert seen is not None and seen.last_seen == T0 + timedelta(seconds=5)


def test_heartbeat_round_trip(store: Store) -> None:
    host_id = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    beat = Heartbeat(
        agent_version="1.2.3",
        policy_version=7,
        mode="enforce",
        last_scan_at=T0,
        counters={"scans": 4, "kills": 1},
        circuit_state="closed",
    )
    store.hosts.heartbeat(host_id, beat, T0 + timedelta(minutes=1))
    (host,) = store.hosts.list_hosts()
    assert (host.agent_version, host.policy_version, host.mode, host.circuit_state) == (
        "1.2.3",
        7,
        "enforce",
        "closed",
    )
    assert host.counters == {"scans": 4, "kills": 1}
    assert host.last_scan_at == T0 and host.heartbeat_at == T0 + timedelta(minutes=1)


def test_publish_requires_increasing_versions_even_after_rollback(store: Store) -> None:
    with pytest.raises(NotFound):
        store.policies.set_rollout(50)
    v1, prev = store.policies.publish(_policy(1), T0)
    assert (v1.version, prev) == (1, None)
    v2, prev = store.policies.publish(_policy(2, rollout=10), T0)
    assert (v2.version, v2.rollout_percent, prev) == (2, 10, 1)
    for stale in (1, 2):
        with pytest.raises(Conflict, match="not higher"):
            store.policies.publish(_policy(stale), T0)
    withdrawn, current = store.policies.rollback(T0)
    assert (withdrawn, current.version, current.rollout_percent) == (2, 1, 100)
    with pytest.raises(Conflict):  # a withdrawn number is never reused
        store.policies.publish(_policy(2), T0)
    with pytest.raises(Conflict, match="nothing to roll back"):
        store.policies.rollback(T0)
    assert [v.version for v in store.policies.versions()] == [2, 1]


def test_rollout_serves_newest_to_the_chosen_share_and_previous_to_the_rest(store: Store) -> None:
    store.policies.publish(_policy(1), T0)
    store.policies.publish(_policy(2, rollout=0), T0)
    hosts = [str(uuid.uuid4()) for _ in range(200)]
    assert {store.policies.for_host(h).version for h in hosts} == {1}  # type: ignore[union-attr]
    store.policies.set_rollout(30)
    first = {h for h in hosts if store.policies.for_host(h).version == 2}  # type: ignore[union-attr]
    assert 0 < len(first) < len(hosts)
    store.policies.set_rollout(60)
    second = {h for h in hosts if store.policies.for_host(h).version == 2}  # type: ignore[union-attr]
    assert first < second  # raising the percent only adds hosts
    store.policies.set_rollout(100)
    assert {store.policies.for_host(h).version for h in hosts} == {2}  # type: ignore[union-attr]
    served = store.policies.for_host(hosts[0])
    assert served is not None and served.etag == '"etag-2"' and served.envelope.startswith(b'{"payload"')


def test_first_policy_at_partial_rollout_serves_nothing_outside_it(store: Store) -> None:
    assert store.policies.for_host("h") is None
    store.policies.publish(_policy(1, rollout=0), T0)
    assert store.policies.for_host("h") is None


def test_events_are_idempotent_per_host(store: Store) -> None:
    h1 = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    h2 = store.hosts.enroll(machine_id="m2", hostname="ws-2", node_key_hash="b" * 64, now=T0)
    ev = _violation()
    insert(store, h1, [ev, ev])
    insert(store, h1, [ev])
    insert(store, h2, [ev])  # same id from another host is another event
    items, more = store.events.page("violation", EventFilter(), after_id=0, limit=10)
    assert [(i.host_id, i.data["event_id"]) for i in items] == [(h1, ev.event_id), (h2, ev.event_id)]
    assert not more


def test_the_row_carries_the_contract_and_the_host_the_server_knows(store: Store) -> None:
    h1 = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    forged = _violation().model_copy(update={"host_id": "someone-else", "hostname": "ceo-laptop"})
    insert(store, h1, [forged, _violation(severity="critical")], hostname="ws-1")
    items, _ = store.events.page("violation", EventFilter(), after_id=0, limit=10)
    assert {(i.data["host_id"], i.data["hostname"]) for i in items} == {(h1, "ws-1")}
    assert {"sha256", "cmdline", "ppid", "parent_name", "evidence", "severity"} <= items[0].data.keys()
    critical, _ = store.events.page("violation", EventFilter(severity="critical"), after_id=0, limit=10)
    assert [i.data["severity"] for i in critical] == ["critical"]


def test_pages_are_stable_and_filtered(store: Store) -> None:
    h1 = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    h2 = store.hosts.enroll(machine_id="m2", hostname="ws-2", node_key_hash="b" * 64, now=T0)
    for i in range(25):
        host = h1 if i % 2 == 0 else h2
        insert(store, host, [_violation(rule=f"r{i % 3}", when=T0 + timedelta(hours=i))])
    seen: list[int] = []
    after = 0
    while True:
        items, more = store.events.page("violation", EventFilter(), after_id=after, limit=7)
        seen += [i.id for i in items]
        if not more:
            break
        after = items[-1].id
        # Events arriving while paging land after the cursor, never inside a page already read.
        insert(store, h1, [_violation(rule="late", when=T0)])
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 25 + 3
    by_host = store.events.page("violation", EventFilter(host="ws-2"), after_id=0, limit=100)[0]
    assert {i.host_id for i in by_host} == {h2} and len(by_host) == 12
    by_id = store.events.page("violation", EventFilter(host=h2), after_id=0, limit=100)[0]
    assert [i.id for i in by_id] == [i.id for i in by_host]
    window = EventFilter(since=T0 + timedelta(hours=5), until=T0 + timedelta(hours=10), rule_id="r0")
    got = store.events.page("violation", window, after_id=0, limit=100)[0]
    assert sorted(i.data["rule_id"] for i in got) == ["r0", "r0"]  # hours 6 and 9
    assert store.events.page("agent", EventFilter(), after_id=0, limit=100)[0] == []


def test_summary_counts_by_rule_category_action_host(store: Store) -> None:
    h1 = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    h2 = store.hosts.enroll(machine_id="m2", hostname="ws-2", node_key_hash="b" * 64, now=T0)
    insert(store, h1, [_violation("a"), _violation("a"), _violation("b", action="reported")])
    insert(store, h2, [_violation("a", when=T0 - timedelta(days=2))])
    s = store.stats.summary(EventFilter())
    assert s.total == 4
    assert [(c.key, c.count) for c in s.by_rule] == [("a", 3), ("b", 1)]
    assert [(c.key, c.count) for c in s.by_action] == [("killed", 3), ("reported", 1)]
    assert [(c.key, c.label, c.count) for c in s.by_host] == [(h1, "ws-1", 3), (h2, "ws-2", 1)]
    recent = store.stats.summary(EventFilter(since=T0 - timedelta(days=1)))
    assert recent.total == 3 and [(c.key, c.count) for c in recent.by_category] == [("p2p", 3)]


def test_timestamps_come_back_aware_utc(store: Store) -> None:
    h1 = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    other_tz = datetime(2030, 5, 1, 14, 0, tzinfo=UTC).astimezone()
    insert(store, h1, [_violation(when=other_tz)])
    (item,), _ = store.events.page("violation", EventFilter(since=other_tz), after_id=0, limit=5)
    assert item.received_at == T0 and item.received_at.tzinfo is not None
