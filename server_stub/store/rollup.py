"""Pre-aggregated violation counts, so the console's figures cost the same at 1 M violations as at 1 k.

Three levels answer a count over any period exactly: whole UTC days from `violation_daily`,
whole hours at the period's ragged ends from `violation_hourly`, and the minutes left over
from the events themselves. `host_daily` does the same for counts by host (days, then events).
The tables are kept in step inside the transaction that stores or triages violations
(`apply`), and rebuilt from the events by `rebuild` (the migration and bulk loads).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from server_stub.store.engine import dialect_insert, is_postgres
from server_stub.store.tables import events, host_daily, violation_daily, violation_hourly

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


def apply(conn: Connection, facts: Iterable[Fact], sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) these violations from every rollup."""
    daily: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    hourly: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    hosts: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0])
    for f in facts:
        dims = (f.rule_id, f.category, f.action, f.triage)
        for acc, key in (
            (daily, (day_key(f.detected_at), *dims)),
            (hourly, (hour_key(f.detected_at), *dims)),
        ):
            acc[key][0] += sign
            acc[key][1] += sign * f.stop_seconds
        hosts[(day_key(f.detected_at), f.host_id, f.triage)][0] += sign
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
        stmt = dialect_insert(conn, table)
        updates = {"n": table.c.n + stmt.excluded.n}
        if table is not host_daily:
            updates["stop_seconds"] = table.c.stop_seconds + stmt.excluded.stop_seconds
        conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=updates), values)


def rebuild(conn: Connection) -> None:
    """Recompute every rollup from the stored violations (one INSERT ... SELECT each)."""
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
