"""Two real servers on one PostgreSQL storing uploads in groups (server_stub/ingestgroup.py):
many hosts uploading at once through both, every batch also retried through the other server
at the same time. Every event is stored exactly once, every upload acknowledges all its ids,
and the rollups equal a rebuild from the events."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from server_stub.store import EventFilter, Store, rollup
from server_stub.store.tables import (
    events,
    host_daily,
    host_running,
    host_totals,
    violation_daily,
    violation_hourly,
)
from tests.support.server import LiveServer, fresh_pg_database, pg_url_or_skip, run_server, secrets_of
from tests.support.server_events import agent_event, violation

pytestmark = pytest.mark.postgres

HOSTS, ROUNDS, BATCH = 12, 6, 20


@contextlib.contextmanager
def two_servers(tmp_path: Path) -> Iterator[tuple[str, LiveServer, LiveServer]]:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_pg_database(pg_url_or_skip()))
        a = stack.enter_context(run_server(tmp_path / "a", db_url=url))
        b = stack.enter_context(
            run_server(tmp_path / "b", db_url=url, public_keys=[a.public_key], secrets_env=secrets_of(a))
        )
        yield url, a, b


def test_two_servers_store_concurrent_and_retried_uploads_exactly_once(tmp_path: Path) -> None:
    with two_servers(tmp_path) as (url, a, b):
        hosts = [(a if i % 2 else b).enroll(f"ws-live{i}") for i in range(HOSTS)]
        rnd = random.Random(3)
        rules = ["p2p-a", "p2p-b", "remote"]
        batches = {
            h.host_id: [
                [violation(hostname=h.hostname, rule_id=rnd.choice(rules)) for _ in range(BATCH)]
                + [agent_event()]
                for _ in range(ROUNDS)
            ]
            for h in hosts
        }
        errors: list[str] = []
        start = threading.Barrier(2 * HOSTS)

        def upload(host_index: int, first: LiveServer) -> None:
            host = hosts[host_index]
            start.wait()
            with first.client(host.node_key) as c:
                for batch in batches[host.host_id]:
                    r = c.post("/events", json={"events": batch})
                    want = [e["event_id"] for e in batch]
                    if r.status_code != 200 or r.json()["acked"] != want:
                        errors.append(f"{r.status_code} {r.text[:200]}")

        # Each host uploads through one server while its retry goes through the other, at once.
        threads = [
            threading.Thread(target=upload, args=(i, server)) for i in range(HOSTS) for server in (a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        with contextlib.closing(Store.open(url)) as store:
            with store.engine.connect() as conn:
                stored = conn.execute(
                    sa.select(events.c.host_id, events.c.event_id, events.c.received_at)
                ).all()
            assert len(stored) == len({(h, e) for h, e, _ in stored}) == HOSTS * ROUNDS * (BATCH + 1)
            # A group's uploads share its time of receipt: 24 clients at once were stored in groups.
            hosts_by_time: dict[object, set[str]] = {}
            for h, _, received in stored:
                hosts_by_time.setdefault(received, set()).add(h)
            assert max(len(v) for v in hosts_by_time.values()) > 1
            kept = _counts(store)
            with store.engine.begin() as conn:
                rollup.rebuild(conn)
            assert _counts(store) == kept
            assert store.stats.summary(EventFilter()).total == HOSTS * ROUNDS * BATCH
        with httpx.Client(timeout=10) as c:
            assert c.get(a.api_url + "/healthz").status_code == 200


def _counts(store: Store) -> dict[str, set[tuple[object, ...]]]:
    """Every rollup row (stop seconds all 0: no event here has a first_seen)."""
    with store.engine.connect() as conn:
        return {
            t.name: {tuple(r) for r in conn.execute(sa.select(t))}
            for t in (violation_daily, violation_hourly, host_daily, host_running, host_totals)
        }
