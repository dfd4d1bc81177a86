"""Pre-aggregated violation counts, so the console's figures cost the same at 1 M violations as at 1 k.

Three levels answer a count over any period exactly: whole UTC days from `violation_daily`,
whole hours at the period's ragged ends from `violation_hourly`, and the minutes left over
from the events themselves. `host_daily` does the same for counts by host (days, then events).

Counts by host over a period must not read a row per host and day: `host_running` keeps, per
host (scope "" = every rule, or one rule id), a running total at the end of each hour the
host had violations, and `host_totals` the host's total so far. A period's count is then two
lookups per host (the running totals just before each end) plus the minutes left over from
the events: a 30-day top ten reads about as many rows as there are hosts.

The tables are kept in step inside the transaction that stores or triages violations
(`apply`; on PostgreSQL an upload's new violations are counted by the statement that inserts
them, `counting_ctes`, from the counts `new_counts` made of the rows), and rebuilt from the
events by `rebuild` (the migrations and bulk loads).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from server_stub.store import bulk
from server_stub.store.engine import advisory_key, dialect_insert, is_postgres, serialize_writers
from server_stub.store.pgarrays import Column, floats, ints, texts
from server_stub.store.tables import (
    events,
    host_daily,
    host_running,
    host_totals,
    violation_daily,
    violation_hourly,
)

OPEN = "open"
STOPPED = ("killed", "suspended", "denied", "connection_blocked")


@dataclass(frozen=True, slots=True)
class Fact:
    """What the rollups need of one violation."""

    detected_at: datetime
    host_id: str
    rule_id: str
    category: str
    action: str
    triage: str  # a triage state or OPEN
    stop_seconds: float  # 0 unless stopped


def fact(row: Any) -> Fact:
    """From an events row (detected_at, host_id, rule_id, category, action, triage_state, first_seen)."""
    stop = 0.0
    if row.action in STOPPED and row.first_seen is not None:
        stop = max(0.0, (row.detected_at - row.first_seen).total_seconds())
    return Fact(
        detected_at=row.detected_at,
        host_id=row.host_id,
        rule_id=row.rule_id or "",
        category=row.category or "",
        action=row.action or "",
        triage=row.triage_state or OPEN,
        stop_seconds=stop,
    )


FACT_COLUMNS = (
    events.c.detected_at,
    events.c.host_id,
    events.c.rule_id,
    events.c.category,
    events.c.action,
    events.c.triage_state,
    events.c.first_seen,
)


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


def day_key(dt: datetime) -> str:
    return _utc(dt).strftime("%Y-%m-%d")


def hour_key(dt: datetime) -> str:
    return _utc(dt).strftime("%Y-%m-%d %H")


def lock_hosts(conn: Connection, host_ids: Iterable[str]) -> None:
    """Hold these hosts' rollup rows for this transaction (PostgreSQL; SQLite serializes writers).

    A new hour's running total starts from the total before it, read in the transaction: two
    uploads of one host at once (a retry through another replica) must not both read the old
    total. Every writer takes its hosts' locks first, in sorted order, before any row lock, and
    upserts rows in key order, so concurrent writers queue instead of deadlocking.
    """
    for host in sorted(set(host_ids)):
        serialize_writers(conn, _HOST_LOCK + host)


_HOST_LOCK = "endpoint-server:host:"
# Each host's lock, then its hosts row, one host after the other in the order given (sorted).
_LOCK_UPLOADERS = (
    "SELECT u.h, pg_advisory_xact_lock(u.k), "
    "EXISTS (SELECT 1 FROM hosts WHERE host_id = u.h FOR KEY SHARE) "
    "FROM unnest(%(hosts)s::text[], %(keys)s::bigint[]) WITH ORDINALITY AS u(h, k, n) ORDER BY u.n"
)


def lock_uploaders(conn: Connection, host_ids: Iterable[str]) -> set[str]:
    """PostgreSQL: `lock_hosts` for the uploads' hosts, each host's lock taken in sorted order, and
    each hosts row held as a foreign key check holds it (FOR KEY SHARE: not deleted before this
    commits), in one statement; returns the hosts that exist. (Migration 15 dropped the foreign
    key, which did this once per row.)"""
    sql, params = lock_uploaders_statement(host_ids)
    return uploaders_known(conn.exec_driver_sql(sql, params))


def lock_uploaders_statement(host_ids: Iterable[str]) -> tuple[str, dict[str, Any]]:
    """`lock_uploaders`'s statement, for a caller that sends it itself (a psycopg pipeline);
    `uploaders_known` reads its rows."""
    hosts = sorted(set(host_ids))
    return _LOCK_UPLOADERS, {"hosts": hosts, "keys": [advisory_key(_HOST_LOCK + h) for h in hosts]}


def uploaders_known(rows: Iterable[Sequence[Any]]) -> set[str]:
    """The hosts that exist, from the rows of `lock_uploaders_statement`."""
    return {row[0] for row in rows if row[2]}


def apply(conn: Connection, facts: Iterable[Fact], sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) these violations from every rollup.

    The caller holds `lock_hosts` for the facts' hosts, taken before its first row lock.
    """
    listed = list(facts)
    apply_counts(conn, listed, sign)
    apply_running(conn, listed, sign)


def apply_counts(conn: Connection, facts: Iterable[Fact], sign: int) -> None:
    """The per-day and per-hour counts only (a bulk load then rebuilds the running totals once)."""
    daily: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    hourly: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    hosts: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    for f in facts:
        dims = (f.rule_id, f.category, f.action, f.triage)
        hour = hour_key(f.detected_at)
        day = hour[:10]  # the hour's key starts with its day's (one conversion per violation)
        for acc, key in (
            (daily, (day, *dims)),
            (hourly, (hour, *dims)),
        ):
            acc[key][0] += sign
            acc[key][1] += sign * f.stop_seconds
        hosts[(day, f.host_id, f.triage)][0] += sign
    for table, rows, keys in (
        (violation_daily, daily, ("day", "rule_id", "category", "action", "triage")),
        (violation_hourly, hourly, ("hour", "rule_id", "category", "action", "triage")),
        (host_daily, hosts, ("day", "host_id", "triage")),
    ):
        if not rows:
            continue
        values = [
            {
                **dict(zip(keys, key, strict=True)),
                "n": int(n),
                **({"stop_seconds": s} if table is not host_daily else {}),
            }
            for key, (n, s) in rows.items()
        ]
        bulk.add_to_counts(conn, table, keys, values)  # n (and stop_seconds) added to the stored row


def apply_running(conn: Connection, facts: Iterable[Fact], sign: int) -> None:
    """Add to the running totals of each (scope, host) from each fact's hour on."""
    deltas: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for f in facts:
        hour = hour_key(f.detected_at)
        for scope in ("", f.rule_id):
            d = deltas[(scope, f.host_id, hour)]
            d[0] += sign
            d[1] += sign if f.triage == OPEN else 0
    if not deltas:
        return
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for (scope, host, _), (n_all, n_open) in deltas.items():
        t = totals[(scope, host)]
        t[0] += n_all
        t[1] += n_open
    stmt = dialect_insert(conn, host_totals)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["scope", "host_id"],
            set_={"n_all": host_totals.c.n_all + stmt.excluded.n_all,
                  "n_open": host_totals.c.n_open + stmt.excluded.n_open},
        ),
        [{"scope": sc, "host_id": h, "n_all": a, "n_open": o} for (sc, h), (a, o) in sorted(totals.items())],
    )  # fmt: skip
    # The changes go to a scratch table, then two statements apply them all: a new hour starts
    # from the running total before it (read before any change), and every row from a changed
    # hour on gets the sum of the changes at or before it. Set-based, so a bulk upload costs two
    # statements, not two per host and hour.
    conn.exec_driver_sql(_DELTA_DDL)
    conn.execute(
        running_delta.insert(),
        [
            {"scope": sc, "host_id": h, "hour": hr, "n_all": a, "n_open": o}
            for (sc, h, hr), (a, o) in deltas.items()
        ],
    )
    conn.exec_driver_sql(_START_HOURS)
    conn.exec_driver_sql(_ADD_FROM_HOURS)
    conn.exec_driver_sql("DELETE FROM running_delta")


running_delta = sa.Table(  # a per-connection TEMPORARY table (not in tables.metadata: not schema)
    "running_delta",
    sa.MetaData(),
    sa.Column("scope", sa.String(200)),
    sa.Column("host_id", sa.String(36)),
    sa.Column("hour", sa.String(13)),
    sa.Column("n_all", sa.BigInteger),
    sa.Column("n_open", sa.BigInteger),
)
_DELTA_DDL = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS running_delta "
    "(scope VARCHAR(200), host_id VARCHAR(36), hour VARCHAR(13), n_all BIGINT, n_open BIGINT)"
)
_START_HOURS = (
    "INSERT INTO host_running (scope, host_id, hour, n_all, n_open) "
    "SELECT d.scope, d.host_id, d.hour, "
    "COALESCE((SELECT b.n_all FROM host_running b WHERE b.scope = d.scope AND b.host_id = d.host_id "
    "AND b.hour < d.hour ORDER BY b.hour DESC LIMIT 1), 0), "
    "COALESCE((SELECT b.n_open FROM host_running b WHERE b.scope = d.scope AND b.host_id = d.host_id "
    "AND b.hour < d.hour ORDER BY b.hour DESC LIMIT 1), 0) "
    "FROM running_delta d WHERE true ON CONFLICT (scope, host_id, hour) DO NOTHING"
)
_ADD_FROM_HOURS = (
    "UPDATE host_running SET n_all = host_running.n_all + x.a, n_open = host_running.n_open + x.o "
    "FROM (SELECT r.scope, r.host_id, r.hour, SUM(d.n_all) AS a, SUM(d.n_open) AS o "
    "FROM running_delta d JOIN host_running r "
    "ON r.scope = d.scope AND r.host_id = d.host_id AND r.hour >= d.hour "
    "GROUP BY r.scope, r.host_id, r.hour) AS x "
    "WHERE host_running.scope = x.scope AND host_running.host_id = x.host_id AND host_running.hour = x.hour"
)


class Counted(Protocol):
    """What counting a new violation reads of a stored row (server_stub/store/events.py EventInsert)."""

    @property
    def kind(self) -> str: ...
    @property
    def detected_at(self) -> datetime: ...
    @property
    def rule_id(self) -> str | None: ...
    @property
    def category(self) -> str | None: ...
    @property
    def action(self) -> str | None: ...
    @property
    def first_seen(self) -> datetime | None: ...


def new_counts(host_ids: Sequence[str], rows: Sequence[Counted]) -> dict[str, Column]:
    """The parameters of COUNT_NEW: the violations among `rows` (row i of host `host_ids[i]`)
    counted per key of each rollup, as open violations, keys in Python's string order (the order
    `add_to_counts` and the triage path lock rollup rows in)."""
    per_key: dict[tuple[str, ...], list[float]] = {}
    hours: dict[int, str] = {}
    for host, row in zip(host_ids, rows, strict=True):
        if row.kind != "violation":
            continue
        detected = row.detected_at
        n_hour = int(detected.timestamp()) // 3600  # one conversion per hour, not per violation
        hour = hours.get(n_hour)
        if hour is None:
            hour = hours[n_hour] = hour_key(detected)
        action = row.action or ""
        stop = 0.0
        if action in STOPPED and row.first_seen is not None:
            stop = max(0.0, (detected - row.first_seen).total_seconds())
        key = (hour, row.rule_id or "", row.category or "", action, host)
        acc = per_key.get(key)
        if acc is None:
            per_key[key] = [1, stop]
        else:
            acc[0] += 1
            acc[1] += stop
    daily: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    hourly: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    by_host: dict[tuple[str, ...], int] = defaultdict(int)
    deltas: dict[tuple[str, ...], int] = defaultdict(int)
    for (hour, rule, category, action, host), (n, stop) in per_key.items():  # few: not per row
        dims = (rule, category, action)
        for table, bucket in ((daily, (hour[:10], *dims)), (hourly, (hour, *dims))):
            table[bucket][0] += n
            table[bucket][1] += stop
        by_host[(hour[:10], host)] += int(n)
        deltas[("", host, hour)] += int(n)
        deltas[(rule, host, hour)] += int(n)
    params: dict[str, Column] = {}
    for name, counts in (("d", daily), ("h", hourly)):
        ordered = sorted(counts.items())
        for i, column in enumerate(_COUNT_KEYS):
            params[f"{name}_{column}"] = texts([k[i] for k, _ in ordered])
        params[f"{name}_n"] = ints([int(n) for _, (n, _) in ordered])
        params[f"{name}_stop"] = floats([float(s) for _, (_, s) in ordered])
    summed: tuple[tuple[str, dict[tuple[str, ...], int], tuple[str, ...]], ...] = (
        ("b", by_host, _HOST_KEYS),
        ("r", deltas, _DELTA_KEYS),
    )
    for name, sums, keys in summed:
        ordered_sums = sorted(sums.items())
        for i, column in enumerate(keys):
            params[f"{name}_{column}"] = texts([k[i] for k, _ in ordered_sums])
        params[f"{name}_n"] = ints([n for _, n in ordered_sums])
    return params


_COUNT_KEYS = ("bucket", "rule_id", "category", "action")
_HOST_KEYS = ("day", "host_id")
_DELTA_KEYS = ("scope", "host_id", "hour")


def _given(name: str, keys: tuple[str, ...], values: dict[str, str]) -> str:
    """The rows of `new_counts`'s arrays `name_*` (text keys, then `values`: column -> SQL type), in
    the order given, only when every row of the statement was new (the CTE `all_new`)."""
    columns = [*keys, *values]
    arrays = ", ".join(
        [f"%({name}_{k})b::text[]" for k in keys] + [f"%({name}_{v})b::{t}[]" for v, t in values.items()]
    )
    return f"all_new, unnest({arrays}) WITH ORDINALITY AS {name}({', '.join(columns)}, ord) WHERE all_new.yes"


def counting_ctes(inserted: str) -> str:
    """PostgreSQL: CTEs that add an upload group's violations to every rollup (`apply(conn, facts,
    +1)` for new open violations) in the statement that inserts them, from the counts the caller
    made of its rows (`new_counts`; on PostgreSQL sorting and grouping each event in the
    statement cost more than the whole rollup upkeep does). The counts apply only when every row
    of `inserted` (a CTE of the rows just stored) is new; else the caller counts the rows really
    stored and applies them itself (`apply`), in the same transaction.

    The caller holds `lock_hosts` for every one of those hosts, taken in an earlier statement so
    that this one's snapshot sees what each host's previous writer committed. Rows are upserted
    in key order, the shared daily rows before the hourly ones (as `apply_counts` does; hourly
    reads daily), so this statement, other uploads and triage queue for each other's row locks,
    not deadlocking. (The given keys keep the tables' collation, so each join below is an index
    lookup; only the orders are Python's, "C".)

    Running totals: a new hour starts from the stored total before it plus the batch's
    violations up to it; stored hours from the batch's first on get the batch's violations up
    to them. The two sets are disjoint (one snapshot), so one statement does both.
    """
    counts = ", ".join(f"{c} = {{t}}.{c} + excluded.{c}" for c in ("n", "stop_seconds"))
    dims = "rule_id, category, action"
    sums = {"n": "int8", "stop": "float8"}
    return f"""
    all_new AS MATERIALIZED (SELECT count(*) = %(n)s AS yes FROM {inserted}),
    daily AS (
        INSERT INTO {violation_daily.name} (day, {dims}, triage, n, stop_seconds)
        SELECT bucket, {dims}, '{OPEN}', n, stop FROM {_given("d", _COUNT_KEYS, sums)} ORDER BY ord
        ON CONFLICT (day, {dims}, triage) DO UPDATE SET {counts.format(t=violation_daily.name)}
        RETURNING 1
    ),
    hourly AS (
        INSERT INTO {violation_hourly.name} (hour, {dims}, triage, n, stop_seconds)
        SELECT bucket, {dims}, '{OPEN}', n, stop FROM {_given("h", _COUNT_KEYS, sums)}
        AND (SELECT count(*) FROM daily) >= 0 ORDER BY ord
        ON CONFLICT (hour, {dims}, triage) DO UPDATE SET {counts.format(t=violation_hourly.name)}
    ),
    by_host AS (
        INSERT INTO {host_daily.name} (day, host_id, triage, n)
        SELECT day, host_id, '{OPEN}', n FROM {_given("b", _HOST_KEYS, {"n": "int8"})} ORDER BY ord
        ON CONFLICT (day, host_id, triage) DO UPDATE SET n = {host_daily.name}.n + excluded.n
    ),
    deltas AS MATERIALIZED (
        SELECT scope, host_id, hour, n, ord FROM {_given("r", _DELTA_KEYS, {"n": "int8"})}),
    totals AS (
        INSERT INTO {host_totals.name} (scope, host_id, n_all, n_open)
        SELECT scope, host_id, sum(n), sum(n) FROM deltas GROUP BY scope, host_id ORDER BY min(ord)
        ON CONFLICT (scope, host_id) DO UPDATE SET n_all = {host_totals.name}.n_all + excluded.n_all,
            n_open = {host_totals.name}.n_open + excluded.n_open
    ),
    started AS (
        INSERT INTO {host_running.name} (scope, host_id, hour, n_all, n_open)
        SELECT d.scope, d.host_id, d.hour, coalesce(b.n_all, 0) + upto.n, coalesce(b.n_open, 0) + upto.n
        FROM deltas d
        CROSS JOIN LATERAL (SELECT sum(e.n) AS n FROM deltas e
                            WHERE e.scope = d.scope AND e.host_id = d.host_id AND e.ord <= d.ord) AS upto
        LEFT JOIN LATERAL (SELECT r.n_all, r.n_open FROM {host_running.name} r
                           WHERE r.scope = d.scope AND r.host_id = d.host_id AND r.hour < d.hour
                           ORDER BY r.hour DESC LIMIT 1) AS b ON true
        WHERE NOT EXISTS (SELECT 1 FROM {host_running.name} r
                          WHERE r.scope = d.scope AND r.host_id = d.host_id AND r.hour = d.hour)
        ORDER BY d.ord
    ),
    added AS (
        UPDATE {host_running.name} r SET n_all = r.n_all + x.n, n_open = r.n_open + x.n
        FROM (SELECT s.scope, s.host_id, s.hour, sum(d.n) AS n FROM deltas d
              JOIN {host_running.name} s
                ON s.scope = d.scope AND s.host_id = d.host_id AND s.hour >= d.hour
              GROUP BY s.scope, s.host_id, s.hour) AS x
        WHERE r.scope = x.scope AND r.host_id = x.host_id AND r.hour = x.hour
    )"""


# New open violations counted (new_counts) in the statement that inserts them (store/bulk.py).
COUNT_NEW = counting_ctes(bulk.INSERTED)


def rebuild(conn: Connection) -> None:
    """Recompute every rollup from the stored violations (one INSERT ... SELECT each)."""
    rebuild_counts(conn)
    rebuild_running(conn)


def rebuild_counts(conn: Connection) -> None:
    """violation_daily, violation_hourly and host_daily from the events."""
    for table in (violation_daily, violation_hourly, host_daily):
        conn.execute(sa.delete(table))
    stop = stop_expr(conn)
    triage = sa.func.coalesce(events.c.triage_state, OPEN)
    day, hour = _day_expr(conn), _hour_expr(conn)
    dims = (
        sa.func.coalesce(events.c.rule_id, ""),
        sa.func.coalesce(events.c.category, ""),
        sa.func.coalesce(events.c.action, ""),
        triage,
    )
    viol = events.c.kind == "violation"
    for table, bucket in ((violation_daily, day), (violation_hourly, hour)):
        select = (
            sa.select(bucket, *dims, sa.func.count(), sa.func.coalesce(sa.func.sum(stop), 0.0))
            .where(viol)
            .group_by(bucket, *dims)
        )
        cols = [c.name for c in table.c]
        conn.execute(sa.insert(table).from_select(cols, select))
    select = (
        sa.select(day, events.c.host_id, triage, sa.func.count())
        .where(viol)
        .group_by(day, events.c.host_id, triage)
    )
    conn.execute(sa.insert(host_daily).from_select(["day", "host_id", "triage", "n"], select))


def rebuild_running(conn: Connection) -> None:
    """host_running and host_totals from the events: window sums over each (scope, host)'s hours."""
    for table in (host_running, host_totals):
        conn.execute(sa.delete(table))
    hour = _hour_expr(conn)
    is_open = sa.case((events.c.triage_state.is_(None), 1), else_=0)
    viol = events.c.kind == "violation"
    rule = sa.func.coalesce(events.c.rule_id, "")
    per_hour = sa.union_all(
        sa.select(sa.literal("").label("scope"), events.c.host_id, hour.label("hour"),
                  sa.func.count().label("a"), sa.func.sum(is_open).label("o"))
        .where(viol).group_by(events.c.host_id, hour),
        sa.select(rule.label("scope"), events.c.host_id, hour.label("hour"),
                  sa.func.count().label("a"), sa.func.sum(is_open).label("o"))
        .where(viol).group_by(rule, events.c.host_id, hour),
    ).subquery("per_hour")  # fmt: skip
    part, order = [per_hour.c.scope, per_hour.c.host_id], per_hour.c.hour
    running = sa.select(
        per_hour.c.scope, per_hour.c.host_id, per_hour.c.hour,
        sa.func.sum(per_hour.c.a).over(partition_by=part, order_by=order),
        sa.func.sum(per_hour.c.o).over(partition_by=part, order_by=order),
    )  # fmt: skip
    cols = ["scope", "host_id", "hour", "n_all", "n_open"]
    conn.execute(sa.insert(host_running).from_select(cols, running))
    totals = sa.select(
        host_running.c.scope, host_running.c.host_id, sa.func.max(host_running.c.n_all),
        sa.func.max(host_running.c.n_open),
    ).group_by(host_running.c.scope, host_running.c.host_id)  # fmt: skip
    conn.execute(sa.insert(host_totals).from_select(["scope", "host_id", "n_all", "n_open"], totals))


def _day_expr(conn: Connection) -> Any:
    if is_postgres(conn):
        return sa.func.to_char(sa.func.timezone("UTC", events.c.detected_at), "YYYY-MM-DD")
    return sa.func.substr(events.c.detected_at, 1, 10)  # stored as 'YYYY-MM-DD HH:MM:SS' in UTC


def _hour_expr(conn: Connection) -> Any:
    if is_postgres(conn):
        return sa.func.to_char(sa.func.timezone("UTC", events.c.detected_at), "YYYY-MM-DD HH24")
    return sa.func.substr(events.c.detected_at, 1, 13)


def stop_expr(conn: Connection) -> Any:
    first = sa.func.coalesce(events.c.first_seen, events.c.detected_at)
    if is_postgres(conn):
        secs: Any = sa.func.extract("epoch", events.c.detected_at - first)
    else:
        secs = (sa.func.julianday(events.c.detected_at) - sa.func.julianday(first)) * 86400.0
    positive = sa.func.greatest(secs, 0.0) if is_postgres(conn) else sa.func.max(secs, 0.0)
    return sa.case((events.c.action.in_(STOPPED), positive), else_=0.0)


# --- periods ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """A period [lo, hi) cut into whole days, whole hours and leftover raw intervals."""

    days: tuple[str | None, str | None] | None  # [first, end) day keys; None bound = open
    hours: list[tuple[str, str]]  # [first, end) hour keys
    raw: list[tuple[datetime | None, datetime | None]]  # [lo, hi) of events read directly


def _ceil(dt: datetime, unit: timedelta) -> datetime:
    floor = _floor(dt, unit)
    return floor if floor == dt else floor + unit


def _floor(dt: datetime, unit: timedelta) -> datetime:
    dt = _utc(dt)
    if unit == timedelta(days=1):
        return dt.replace(hour=0, minute=0, second=0, microsecond=0)
    return dt.replace(minute=0, second=0, microsecond=0)


def ceil_hour(dt: datetime) -> datetime:
    return _ceil(dt, timedelta(hours=1))


def floor_hour(dt: datetime) -> datetime:
    return _floor(dt, timedelta(hours=1))


def split(lo: datetime | None, hi: datetime | None) -> Split:
    day, hour = timedelta(days=1), timedelta(hours=1)
    if lo is not None and hi is not None and hi <= lo:
        return Split(None, [], [])
    lo_day = _ceil(lo, day) if lo is not None else None
    hi_day = _floor(hi, day) if hi is not None else None
    if lo_day is not None and hi_day is not None and lo_day >= hi_day:
        # Within one day (or two partial ones): whole hours, then raw ends.
        assert lo is not None and hi is not None
        lo_h, hi_h = _ceil(lo, hour), _floor(hi, hour)
        if lo_h >= hi_h:
            return Split(None, [], [(lo, hi)])
        return Split(None, [(hour_key(lo_h), hour_key(hi_h))], [(lo, lo_h), (hi_h, hi)])
    hours: list[tuple[str, str]] = []
    raw: list[tuple[datetime | None, datetime | None]] = []
    if lo is not None and lo_day is not None:
        lo_h = _ceil(lo, hour)
        if lo_h < lo_day:
            hours.append((hour_key(lo_h), hour_key(lo_day)))
        if lo < lo_h:
            raw.append((lo, lo_h))
    if hi is not None and hi_day is not None:
        hi_h = _floor(hi, hour)
        if hi_day < hi_h:
            hours.append((hour_key(hi_day), hour_key(hi_h)))
        if hi_h < hi:
            raw.append((hi_h, hi))
    days = (day_key(lo_day) if lo_day else None, day_key(hi_day) if hi_day else None)
    return Split(days, hours, raw)


def day_start(key: str | None) -> datetime | None:
    return None if key is None else datetime.strptime(key, "%Y-%m-%d").replace(tzinfo=UTC)


def key_range(column: Any, first: str | None, end: str | None) -> list[sa.ColumnElement[bool]]:
    conds = []
    if first is not None:
        conds.append(column >= first)
    if end is not None:
        conds.append(column < end)
    return conds


def raw_range(lo: datetime | None, hi: datetime | None) -> sa.ColumnElement[bool]:
    conds = []
    if lo is not None:
        conds.append(events.c.detected_at >= lo)
    if hi is not None:
        conds.append(events.c.detected_at < hi)
    return sa.and_(sa.true(), *conds)


def triage_condition(column: Any, triage: str | None) -> list[sa.ColumnElement[bool]]:
    if triage is None:
        return []
    if triage == "triaged":
        return [column != OPEN]
    return [column == triage]
