"""The shared rate-limit table: per key and one-second slot, what all server processes consumed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server_stub.store.engine import db_errors, dialect_insert, read_connection
from server_stub.store.pgarrays import ints, texts
from server_stub.store.tables import rate_usage

MAX_KEY = 300
_PG_ADD = (
    "INSERT INTO rate_usage (scope, key, slot, count) SELECT v.scope, v.key, %b::bigint, v.n"
    " FROM unnest(%b::text[], %b::text[], %b::bigint[]) AS v(scope, key, n)"
    " ON CONFLICT (scope, key, slot) DO UPDATE SET count = rate_usage.count + excluded.count"
)
MAX_ROWS_READ = 20_000  # a flood of busy keys costs a bounded read


@dataclass(frozen=True, slots=True)
class UsageRow:
    scope: str
    key: str
    slot: int
    count: int  # summed over every process, this one included


def stored_key(key: str) -> str:
    """The key as stored: long ones (a 256-character machine id) end in their digest instead."""
    if len(key) <= MAX_KEY:
        return key
    return key[: MAX_KEY - 64] + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


class RateUsageRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, slot: int, counts: Mapping[tuple[str, str], int]) -> None:
        """Add this process's consumption {(scope, key): n} to `slot` (one transaction)."""
        if not counts:
            return
        if self._engine.dialect.name == "postgresql":
            # One statement over arrays (store/pgarrays.py): a thousand busy keys as rows of an
            # executemany cost ~17 ms of CPU a round, twice a second.
            ordered = sorted(counts.items())  # one order everywhere: no deadlock
            arrays = (
                slot,
                texts(scope for (scope, _), _ in ordered),
                texts((stored_key(key) for (_, key), _ in ordered), distinct=True),
                ints(n for _, n in ordered),
            )
            with db_errors("sharing rate-limit counts"), self._engine.begin() as conn:
                conn.exec_driver_sql(_PG_ADD, arrays)
            return
        rows = [
            {"scope": scope, "key": stored_key(key), "slot": slot, "count": n}
            for (scope, key), n in sorted(counts.items())  # one order everywhere: no deadlock
        ]
        with db_errors("sharing rate-limit counts"), self._engine.begin() as conn:
            insert = dialect_insert(conn, rate_usage)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["scope", "key", "slot"],
                    set_={"count": rate_usage.c.count + insert.excluded.count},
                ),
                rows,
            )

    def since(self, slot: int) -> list[UsageRow]:
        """Every row of `slot` and later (at most MAX_ROWS_READ, the newest first)."""
        query = (
            sa.select(rate_usage.c.scope, rate_usage.c.key, rate_usage.c.slot, rate_usage.c.count)
            .where(rate_usage.c.slot >= slot)
            .order_by(rate_usage.c.slot.desc())
            .limit(MAX_ROWS_READ)
        )
        with db_errors("reading shared rate-limit counts"), read_connection(self._engine) as conn:
            return [UsageRow(str(s), str(k), int(n), int(c)) for s, k, n, c in conn.execute(query)]

    def total_since(self, slot: int) -> int:
        """What all processes consumed in `slot` and later, summed (one row read)."""
        total = sa.func.coalesce(sa.func.sum(rate_usage.c.count), 0)
        query = sa.select(total).where(rate_usage.c.slot >= slot)
        with db_errors("reading shared rate-limit counts"), read_connection(self._engine) as conn:
            return int(conn.execute(query).scalar_one())

    def prune(self, before_slot: int) -> int:
        with db_errors("pruning shared rate-limit counts"), self._engine.begin() as conn:
            return conn.execute(sa.delete(rate_usage).where(rate_usage.c.slot < before_slot)).rowcount or 0
