"""Enrollment in the store, on SQLite and PostgreSQL: tokens count and expire, resets open a host
once, and an unknown node key costs a read, never a write."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from server_stub.store import EnrollRefused, Store

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def writes(store: Store) -> Iterator[list[str]]:
    """Every INSERT, UPDATE or DELETE the store sends while the test runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(store.engine, "before_cursor_execute", record)


def test_an_unknown_node_key_never_writes(store: Store, writes: list[str]) -> None:
    store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    writes.clear()
    for n in range(20):
        assert store.hosts.by_key(f"{n:064x}") is None
    assert writes == []
    known = store.hosts.by_key("a" * 64)
    assert known is not None
    store.hosts.touch_many({known.host_id: T0})  # a known key is marked as seen (written behind)
    assert len(writes) == 1


def test_tokens_count_uses_and_expire(store: Store) -> None:
    store.enroll_tokens.create("t" * 64, expires_at=T0 + timedelta(days=7), max_uses=2, by="admin", now=T0)
    assert store.enroll_tokens.usable("t" * 64, T0)
    assert store.enroll_tokens.use("t" * 64, T0) and store.enroll_tokens.use("t" * 64, T0)
    assert not store.enroll_tokens.use("t" * 64, T0) and not store.enroll_tokens.usable("t" * 64, T0)
    store.enroll_tokens.create("u" * 64, expires_at=T0 + timedelta(days=7), max_uses=5, by="admin", now=T0)
    late = T0 + timedelta(days=7, seconds=1)
    assert not store.enroll_tokens.usable("u" * 64, late) and not store.enroll_tokens.use("u" * 64, late)
    assert not store.enroll_tokens.usable("x" * 64, T0)


def test_reset_opens_a_host_for_one_enrollment(store: Store) -> None:
    host_id = store.hosts.enroll(machine_id="m1", hostname="ws-1", node_key_hash="a" * 64, now=T0)
    reset = store.hosts.reset("ws-1")
    assert reset is not None and reset.host_id == host_id
    assert store.hosts.by_key("a" * 64) is None  # the old key stopped at once
    again = store.hosts.enroll(machine_id="m1", hostname="ws-1b", node_key_hash="b" * 64, now=T0)
    assert again == host_id
    with pytest.raises(EnrollRefused):
        store.hosts.enroll(machine_id="m1", hostname="evil", node_key_hash="c" * 64, now=T0)
    record = store.hosts.by_key("b" * 64)
    assert record is not None and record.hostname == "ws-1b"
    assert store.hosts.reset("no-such-host") is None
