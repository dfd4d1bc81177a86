"""The cache invalidation feed: what every server process must drop from its in-memory caches.

A change that makes a cached value wrong (a node key rotated or reset, a policy published,
rolled out or rolled back) appends a row here in the same transaction as the change itself, so
the row is visible exactly when the change is. Each server process reads the rows after the last
one it saw, about once a second (server_stub/watcher.py): one indexed query per second per
process, whatever the request rate.

Rows must become visible in `seq` order, or a reader that already moved past a number would
miss a row committed later with a lower one. Writers therefore take a lock before they draw
their number and keep it until commit (PostgreSQL: an advisory transaction lock; SQLite:
BEGIN IMMEDIATE already serializes every writer).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from server_stub.store.engine import db_errors, read_connection, serialize_writers
from server_stub.store.tables import cache_changes

HOST_KEY = "host"  # subject: a host id whose node key changed
POLICY = "policy"  # subject: "*" (the set of served versions changed)

_LOCK = "endpoint-server:cache-changes"


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    kind: str
    subject: str


def record_change(conn: Connection, kind: str, subject: str, now: datetime) -> None:
    """Append a change inside the caller's transaction (call it last: the lock lasts until commit)."""
    serialize_writers(conn, _LOCK)
    conn.execute(sa.insert(cache_changes).values(kind=kind, subject=subject[:64], at=now))


class ChangeFeed:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def newest(self) -> int:
        """The sequence number of the newest change (0: none yet); a reader starts after it."""
        with db_errors("reading the cache feed"), read_connection(self._engine) as conn:
            value = conn.execute(sa.select(sa.func.max(cache_changes.c.seq))).scalar_one()
        return int(value or 0)

    def since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Changes after `seq`, oldest first (at most `limit`: a reader that gets that many drops all)."""
        with db_errors("reading the cache feed"), read_connection(self._engine) as conn:
            rows = conn.execute(
                sa.select(cache_changes.c.seq, cache_changes.c.kind, cache_changes.c.subject)
                .where(cache_changes.c.seq > seq)
                .order_by(cache_changes.c.seq)
                .limit(limit)
            ).all()
        return [Change(int(r.seq), r.kind, r.subject) for r in rows]

    def prune(self, before: datetime) -> int:
        """Forget changes older than `before` (readers are never that far behind); how many went."""
        with db_errors("pruning the cache feed"), self._engine.begin() as conn:
            result = conn.execute(sa.delete(cache_changes).where(cache_changes.c.at < before))
        return int(result.rowcount or 0)
