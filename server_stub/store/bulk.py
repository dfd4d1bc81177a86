"""One statement stores a host's batch of events, skipping ids stored before (`bulk_insert`).

SQLAlchemy's generic executemany converts every value of every row through its type layer; at
tens of thousands of events a second that was most of the insert's cost. Here each row is one
tuple of values the driver takes as they are (times through the column type's own converter, so
they are stored exactly as SQLAlchemy stores them), and one statement per batch:

    SQLite:      INSERT ... VALUES (...), (...), ... ON CONFLICT DO NOTHING RETURNING event_id
    PostgreSQL:  INSERT ... SELECT ... FROM unnest(<one array per column>) ON CONFLICT DO NOTHING
                 RETURNING event_id   (one plan and ten array parameters, whatever the batch size)

Rows are inserted in the batch's order, so receive ids follow upload order. The `data` column gets
each event's JSON text as is (no re-encoding). On PostgreSQL the caller may have more done in the
same statement, after the rows are inserted (`with_inserted`, with its own parameters: the rollups,
server_stub/store/rollup.py counting_ctes), so that a whole upload is one round trip after its host's lock.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

from server_stub.store.coltypes import UTCDateTime
from server_stub.store.engine import is_postgres
from server_stub.store.pgarrays import texts, times
from server_stub.store.tables import events

if TYPE_CHECKING:
    from server_stub.store.events import EventInsert

# Columns given per row, in this order (host_id and received_at are the batch's).
_PER_ROW = (
    "event_id",
    "kind",
    "detected_at",
    "rule_id",
    "category",
    "action",
    "type",
    "data",
    "first_seen",
    "severity",
)
_COLUMNS = ("host_id", "received_at", *_PER_ROW)
_PG_ARRAY_TYPE = {"detected_at": "timestamptz[]", "first_seen": "timestamptz[]"}
# SQLite caps the host parameters of one statement (999 before 3.32, 32766 since).
_SQLITE_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_CONFLICT = "ON CONFLICT (host_id, event_id) DO NOTHING RETURNING event_id"


def bulk_insert(
    conn: Connection,
    host_id: str,
    rows: Sequence[EventInsert],
    now: datetime,
    *,
    with_inserted: str | None = None,
) -> set[str]:
    """Insert `rows` (distinct event ids) for `host_id`; returns the event ids really inserted.

    `with_inserted` (PostgreSQL only): more CTEs run in the same statement, which may read the
    rows inserted from the CTE `inserted` (its columns: _PG_RETURNED).
    """
    if not rows:
        return set()
    if with_inserted is not None and not is_postgres(conn):
        raise ValueError("with_inserted: PostgreSQL only")
    to_db = _time_converter(conn)
    if is_postgres(conn):
        inserted = _postgres(conn, [host_id] * len(rows), to_db(now), rows, with_inserted)
        return {event_id for _, event_id in inserted}
    return _sqlite(conn, host_id, to_db(now), [_values(ev, to_db) for ev in rows])


def bulk_insert_hosts(
    conn: Connection,
    host_ids: Sequence[str],
    rows: Sequence[EventInsert],
    now: datetime,
    *,
    with_inserted: str,
    with_params: dict[str, Any] | None = None,
) -> set[tuple[str, str]]:
    """PostgreSQL: `bulk_insert` of rows of several hosts (`host_ids[i]` is row i's host; distinct
    (host, event id) pairs) in one statement; returns the (host id, event id) pairs really inserted.
    `with_params`: the parameters of `with_inserted`'s CTEs."""
    statement = hosts_insert(conn, host_ids, rows, now, with_inserted=with_inserted, with_params=with_params)
    return statement.inserted(conn.exec_driver_sql(statement.sql, statement.params).one())


@dataclass(frozen=True, slots=True)
class HostsInsert:
    """`bulk_insert_hosts`'s statement, for a caller that sends it itself (a psycopg pipeline,
    server_stub/store/events.py): its text, its parameters, and how to read its one result row."""

    sql: str
    params: dict[str, Any]
    keys: list[tuple[str, str]]  # (host id, event id) of each row, in order

    def inserted(self, row: Sequence[Any]) -> set[tuple[str, str]]:
        """The (host id, event id) pairs inserted, from the statement's result row."""
        count, some = row
        if count == len(self.keys):
            return set(self.keys)
        return {(host, event_id) for host, event_id in some or ()}


def hosts_insert(
    conn: Connection,
    host_ids: Sequence[str],
    rows: Sequence[EventInsert],
    now: datetime,
    *,
    with_inserted: str,
    with_params: dict[str, Any] | None = None,
) -> HostsInsert:
    """The statement `bulk_insert_hosts` runs (PostgreSQL)."""
    params = _pg_params(host_ids, _time_converter(conn)(now), rows)
    params["n"] = len(rows)
    if with_params:
        params.update(with_params)
    keys = [(host, ev.event_id) for host, ev in zip(host_ids, rows, strict=True)]
    return HostsInsert(_pg_sql(with_inserted), params, keys)


def _values(ev: EventInsert, to_db: Callable[[datetime | None], Any]) -> tuple[Any, ...]:
    return (
        ev.event_id,
        ev.kind,
        to_db(ev.detected_at),
        ev.rule_id,
        ev.category,
        ev.action,
        ev.type,
        _text(ev.data),
        to_db(ev.first_seen),
        ev.severity,
    )


def _text(data: dict[str, Any] | str) -> str:
    return data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)


def _time_converter(conn: Connection) -> Callable[[datetime | None], Any]:
    """The column type's own bind conversion (UTC; SQLite's text format), None kept."""
    return _converter(conn.dialect)


@functools.lru_cache(maxsize=8)  # per engine's dialect: finding it costs more than a small upload's rows
def _converter(dialect: Dialect) -> Callable[[datetime | None], Any]:
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return lambda value: value
    if process(_PROBE) == _sqlite_text(_PROBE):  # the same text, from one C call instead of three
        return lambda value: None if value is None else _sqlite_text(value)
    return lambda value: None if value is None else process(value)


_PROBE = datetime(2031, 2, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-5)))


def _sqlite_text(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite(conn: Connection, host_id: str, now: Any, values: list[tuple[Any, ...]]) -> set[str]:
    per_statement = _SQLITE_PARAMS // len(_COLUMNS)
    one = "(" + ",".join("?" * len(_COLUMNS)) + ")"
    inserted: set[str] = set()
    for start in range(0, len(values), per_statement):
        chunk = values[start : start + per_statement]
        sql = (
            f"INSERT INTO {events.name} ({', '.join(_COLUMNS)}) VALUES "
            + ",".join([one] * len(chunk))
            + f" {_CONFLICT}"
        )
        params: list[Any] = []
        for row in chunk:
            params += (host_id, now, *row)
        inserted.update(r[0] for r in conn.exec_driver_sql(sql, tuple(params)))
    return inserted


_PG_INSERT = (
    f"INSERT INTO {events.name} ({', '.join(_COLUMNS)}) "
    f"SELECT u.host_id, %(now)s, "
    + ", ".join(f"u.{c}::json" if c == "data" else f"u.{c}" for c in _PER_ROW)
    + " FROM unnest(%(host_id)b::text[], "
    # %(x)b: arrays sent in binary, each built in one pass (server_stub/store/pgarrays.py)
    + ", ".join(f"%({c})b::{_PG_ARRAY_TYPE.get(c, 'text[]')}" for c in _PER_ROW)
    + f") WITH ORDINALITY AS u(host_id, {', '.join(_PER_ROW)}, n) ORDER BY u.n"
    + " ON CONFLICT (host_id, event_id) DO NOTHING"
)
# What the CTEs given to bulk_insert may read of each inserted row.
INSERTED = "inserted"
_PG_RETURNED = "host_id, event_id"


@functools.cache
def _pg_sql(with_inserted: str | None) -> str:
    if with_inserted is None:
        return f"{_PG_INSERT} RETURNING host_id, event_id"
    # One row back, not one per event: how many were inserted, and their ids only when some were
    # not (a retry), so the usual answer is "all of them".
    sql = (
        f"WITH {INSERTED} AS MATERIALIZED ({_PG_INSERT} RETURNING {_PG_RETURNED}), {with_inserted} "
        f"SELECT count(*), CASE WHEN count(*) < %(n)s THEN array_agg(ARRAY[host_id, event_id]) END "
        f"FROM {INSERTED}"
    )
    # One space between words: psycopg parses a statement once only up to 4 kB (longer: each time).
    if "--" in sql:
        raise ValueError("a -- comment would swallow the rest once the lines are joined: use /* */")
    return " ".join(sql.split())


def _pg_params(host_ids: Sequence[str], now: Any, rows: Sequence[EventInsert]) -> dict[str, Any]:
    """The insert's parameters: `now`, and one array per column (_COLUMNS but received_at)."""
    params = {
        "host_id": texts(host_ids),
        "now": now,
        "event_id": texts([ev.event_id for ev in rows], distinct=True),
        "kind": texts([ev.kind for ev in rows]),
        "detected_at": times([ev.detected_at for ev in rows]),
        "rule_id": texts([ev.rule_id for ev in rows]),
        "category": texts([ev.category for ev in rows]),
        "action": texts([ev.action for ev in rows]),
        "type": texts([ev.type for ev in rows]),
        "data": texts([_text(ev.data) for ev in rows], distinct=True),
        "first_seen": times([ev.first_seen for ev in rows]),
        "severity": texts([ev.severity for ev in rows]),
    }
    if len(params) != len(_COLUMNS):  # a column added to _PER_ROW and not here
        raise ValueError(f"insert parameters: {sorted(params)} for columns {_COLUMNS}")
    return params


def _postgres(
    conn: Connection,
    host_ids: Sequence[str],
    now: Any,
    rows: Sequence[EventInsert],
    with_inserted: str | None,
) -> set[tuple[str, str]]:
    params = _pg_params(host_ids, now, rows)
    if with_inserted is None:
        return {(r[0], r[1]) for r in conn.exec_driver_sql(_pg_sql(with_inserted), params)}
    params["n"] = len(rows)
    keys = [(host, ev.event_id) for host, ev in zip(host_ids, rows, strict=True)]
    statement = HostsInsert(_pg_sql(with_inserted), params, keys)
    return statement.inserted(conn.exec_driver_sql(statement.sql, params).one())


def add_to_counts(
    conn: Connection, table: Table, keys: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Add each row's other columns to the stored row with the same `keys` (inserted when new).

    Rows have distinct keys. One statement with a fixed text whatever the number of rows: the
    driver and the database parse and plan it once (a multi-row VALUES is a new statement per size).
    """
    if not rows:
        return
    columns = list(rows[0])
    # In key order: two transactions upserting overlapping rows then lock them in the same order
    # (PostgreSQL), and wait for each other instead of deadlocking.
    rows = sorted(rows, key=lambda row: tuple(row[k] for k in keys))
    summed = [c for c in columns if c not in keys]
    conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET " + ", ".join(
        f"{c} = {table.name}.{c} + excluded.{c}" for c in summed
    )
    if is_postgres(conn):
        types = {c: table.c[c].type.compile(dialect=conn.dialect) for c in columns}
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM unnest("
            + ", ".join(f"%({c})b::{types[c]}[]" for c in columns)
            + f") WITH ORDINALITY AS u({', '.join(columns)}, ord) ORDER BY ord {conflict}"
        )
        conn.exec_driver_sql(sql, {c: [row[c] for row in rows] for c in columns})
        return
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) {conflict}"
    )
    conn.exec_driver_sql(sql, [tuple(row[c] for c in columns) for row in rows])
