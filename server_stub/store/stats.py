"""Aggregates for the summary, the console and the compliance report: counted by the database.

Counts over a period read the rollups (server_stub/store/rollup.py: whole days, whole hours,
then the leftover minutes from the events), so their cost does not grow with the number of
stored violations; a filter by host reads that host's events through its index. Python only
shapes the (small) grouped results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles

from server_stub.store import rollup
from server_stub.store.engine import db_errors, is_postgres, read_connection, utcnow
from server_stub.store.events import VIOLATION, EventFilter, conditions
from server_stub.store.tables import (
    events,
    host_daily,
    host_running,
    host_totals,
    hosts,
    violation_daily,
    violation_hourly,
)

# The minutes at a period's ends are read from this index (time first, every filter column in it);
# SQLite would otherwise walk a host index once per host to group by host.
RAW_INDEX = "INDEXED BY ix_events_console"
# What counts as "stopped" for the detection-to-stop time.
STOPPED_ACTIONS = rollup.STOPPED
TOP = 10


@dataclass(frozen=True, slots=True)
class Count:
    key: str
    count: int
    label: str | None = None  # hostname, for counts by host


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    open: int
    by_rule: list[Count]
    by_category: list[Count]
    by_action: list[Count]
    by_host: list[Count]
    by_triage: list[Count]
    # With summary(..., host_texts=True): by_host as the JSON objects of GET /summary's by_host
    # ({"count", "host", "hostname"}), written by the database -- no Python object per host.
    by_host_texts: list[str] | None = None


@dataclass(frozen=True, slots=True)
class DayCount:
    day: str  # YYYY-MM-DD (UTC)
    category: str
    action: str
    count: int


@dataclass(frozen=True, slots=True)
class StopTimes:
    stopped: int
    average_seconds: float | None


@dataclass(frozen=True, slots=True)
class HeldHost:
    host_id: str
    hostname: str
    reason: str


@dataclass(frozen=True, slots=True)
class Fleet:
    enrolled: int
    reporting: int
    stale: int
    enforcing: int
    monitor: int
    current_version: int | None
    on_current: int
    versions: list[Count]  # hosts per policy version ("none" for hosts without one)
    held: list[HeldHost]  # hosts held in monitor mode by a safety rail, with the reason
    held_total: int


def _day(conn: Connection) -> Any:
    if is_postgres(conn):
        return sa.func.to_char(sa.func.timezone("UTC", events.c.detected_at), "YYYY-MM-DD")
    return sa.func.substr(events.c.detected_at, 1, 10)  # stored as 'YYYY-MM-DD HH:MM:SS' in UTC


def _raw_only(flt: EventFilter) -> bool:
    """Filters the rollups do not keep (host, severity): counted from the events themselves."""
    return flt.host is not None or flt.severity is not None


def _rollup_filters(table: Any, flt: EventFilter) -> list[Any]:
    given = (("rule_id", flt.rule_id), ("category", flt.category), ("action", flt.action))
    conds = [table.c[name] == value for name, value in given if value is not None]
    return conds + rollup.triage_condition(table.c.triage, flt.triage)


def _raw_dim(conn: Connection, dim: str) -> Any:
    if dim == "day":
        return _day(conn)
    if dim == "triage":
        return sa.func.coalesce(events.c.triage_state, rollup.OPEN)
    if dim == "host_id":
        return events.c.host_id
    return sa.func.coalesce(events.c[dim], "")


def _counts(conn: Connection, flt: EventFilter, dims: list[str]) -> list[Any]:
    """Rows of (*dims, n, s): violation counts (and stop seconds) over the filter's period.

    Whole days come from violation_daily, the whole hours at the ends from violation_hourly,
    the minutes left from the events (see server_stub/store/rollup.py).
    """
    sp = rollup.split(flt.since, flt.until)
    parts: list[Any] = []
    for table, bucket, ranges in (
        (violation_daily, "day", [sp.days] if sp.days else []),
        (violation_hourly, "hour", sp.hours),
    ):
        for first, end in ranges:
            cols = [
                (sa.func.substr(table.c.hour, 1, 10) if bucket == "hour" else table.c.day)
                if d == "day"
                else table.c[d]
                for d in dims
            ]
            parts.append(
                sa.select(*[c.label(d) for c, d in zip(cols, dims, strict=True)],
                          sa.func.sum(table.c.n).label("n"), sa.func.sum(table.c.stop_seconds).label("s"))
                .where(*rollup.key_range(table.c[bucket], first, end), *_rollup_filters(table, flt))
                .group_by(*cols)
            )  # fmt: skip
    if sp.raw:
        raw_flt = EventFilter(
            rule_id=flt.rule_id, category=flt.category, action=flt.action, triage=flt.triage
        )
        cols = [_raw_dim(conn, d) for d in dims]
        parts.append(
            sa.select(*[c.label(d) for c, d in zip(cols, dims, strict=True)],
                      sa.func.count().label("n"), sa.func.sum(rollup.stop_expr(conn)).label("s"))
            .where(*conditions(VIOLATION, raw_flt), sa.or_(*[rollup.raw_range(lo, hi) for lo, hi in sp.raw]))
            .group_by(*cols)
            .with_hint(events, RAW_INDEX, dialect_name="sqlite")
        )  # fmt: skip
    if not parts:
        return []
    u = sa.union_all(*parts).subquery("parts")
    n = sa.func.sum(u.c.n).label("n")
    query = sa.select(*[u.c[d] for d in dims], n, sa.func.sum(u.c.s).label("s")).group_by(
        *[u.c[d] for d in dims]
    )
    return [r for r in conn.execute(query.order_by(n.desc(), *[u.c[d] for d in dims])) if r.n]


def _running_value(table: Any, triage: str | None) -> Any:
    """The running-total column for a triage filter (None: the rollup does not keep it)."""
    if triage is None:
        return table.c.n_all
    if triage == rollup.OPEN:
        return table.c.n_open
    if triage == "triaged":
        return table.c.n_all - table.c.n_open
    return None


def _running_host_counts(
    conn: Connection, flt: EventFilter, limit: int | None, texts: bool = False
) -> list[Any] | None:
    """(host_id, n, hostname) over the period from the running totals, most first: per host, the
    total before the period's end minus the total before its start (two index lookups), plus the
    minutes at the ends read from the events. None when the running totals do not keep the filter.

    For the `limit` largest, only the hosts with the largest totals so far are counted: a host's
    count in any period is at most its total, so once the last of the `limit` counted beats the
    total of every host not counted, no other host can enter (else count more and try again)."""
    bound = _running_value(host_totals, flt.triage)
    if flt.category is not None or flt.action is not None or bound is None:
        return None
    scope = flt.rule_id or ""
    if limit is None:
        return [r for r in conn.execute(_running_query(flt, scope, None, None, texts)).all() if r[1]]
    k = max(4 * limit, 40)
    while True:
        ranked = (
            sa.select(host_totals.c.host_id)
            .where(host_totals.c.scope == scope)
            .order_by(bound.desc(), host_totals.c.host_id)
        )
        only = ranked.limit(k).scalar_subquery()
        rows = list(conn.execute(_running_query(flt, scope, only, limit, texts)).all())
        rest = conn.execute(
            sa.select(bound).where(host_totals.c.scope == scope).order_by(bound.desc(), host_totals.c.host_id)
            .offset(k).limit(1)
        ).scalar()  # fmt: skip
        if rest is None or int(rest) <= 0 or (len(rows) == limit and int(rows[-1].n) > int(rest)):
            return [r for r in rows if r.n]
        k *= 8


def _running_query(
    flt: EventFilter, scope: str, only: Any | None, limit: int | None, texts: bool = False
) -> sa.Select[Any]:
    """Counts by host of the period from the running totals and the events at its ends, for the
    hosts in `only` (a subquery of host ids) or every host."""
    lo = rollup.ceil_hour(flt.since) if flt.since is not None else None
    hi = rollup.floor_hour(flt.until) if flt.until is not None else None
    raw: list[tuple[datetime | None, datetime | None]] = []
    parts: list[Any] = []
    t = host_totals
    if lo is not None and hi is not None and hi < lo:
        raw.append((flt.since, flt.until))  # within one hour: the events alone
    else:

        def before(key: str) -> Any:
            r = host_running.alias("r")
            found = (
                sa.select(_running_value(r, flt.triage))
                .where(r.c.scope == t.c.scope, r.c.host_id == t.c.host_id, r.c.hour < key)
                .order_by(r.c.hour.desc())
                .limit(1)
                .scalar_subquery()
            )
            return sa.func.coalesce(found, 0)

        upper = _running_value(t, flt.triage) if hi is None else before(rollup.hour_key(hi))
        lower = before(rollup.hour_key(lo)) if lo is not None else sa.literal(0)
        running = sa.select(t.c.host_id, (upper - lower).label("n")).where(t.c.scope == scope)
        parts.append(running.where(t.c.host_id.in_(only)) if only is not None else running)
        if flt.since is not None and lo is not None and flt.since < lo:
            raw.append((flt.since, lo))
        if flt.until is not None and hi is not None and hi < flt.until:
            raw.append((hi, flt.until))
    if raw:
        ends = _raw_by_host(EventFilter(rule_id=flt.rule_id, triage=flt.triage), raw)
        parts.append(ends.where(events.c.host_id.in_(only)) if only is not None else ends)
    return _named_counts(parts, limit, texts)


def _named_counts(parts: list[Any], limit: int | None, texts: bool = False) -> sa.Select[Any]:
    """(host_id, n, hostname) of the (host_id, n) parts summed by host, most first (the `limit`
    largest): the names joined in the same query (an IN list of every host counted is too long).
    Hosts counting 0 are left in (the caller drops them): a HAVING made PostgreSQL expect a few
    dozen hosts and look each name up alone (50,000 lookups, 1 s). `texts`: and each host's
    entry of GET /summary's by_host, as JSON text (`entry`: see _host_entry)."""
    if len(parts) == 1:  # each part has a row per host already
        counted = parts[0]
        u: Any = counted.selected_columns
        n: Any = u.n
    else:
        u = sa.union_all(*parts).subquery("parts").c
        n = sa.func.sum(u.n).label("n")
        counted = sa.select(u.host_id, n).group_by(u.host_id)
    if limit is not None:
        counted = counted.order_by(n.desc(), u.host_id).limit(limit)
    c = counted.subquery("counted")
    columns = [c.c.host_id, c.c.n, hosts.c.hostname]
    if texts:
        columns.append(_HostEntry(c.c.n, c.c.host_id, hosts.c.hostname).label("entry"))
    return (
        sa.select(*columns)
        .select_from(c.outerjoin(hosts, hosts.c.host_id == c.c.host_id))
        .order_by(c.c.n.desc(), c.c.host_id)
    )


class _HostEntry(sa.sql.expression.FunctionElement[str]):
    """A host's entry of GET /summary's by_host as JSON text, written by the database exactly as
    the route writes one (json.dumps, compact, non-ASCII as is): {"count":N,"host":ID,"hostname":
    NAME}, without "hostname" for a host the hosts table does not know. Both databases escape a
    string as Python's json does: a quote and a backslash, backspace, form feed, newline, carriage
    return and tab by a backslash, the other control characters as lowercase \\u00xx."""

    type = sa.String()
    inherit_cache = True


@compiles(_HostEntry, "postgresql")
def _host_entry_postgresql(element: _HostEntry, compiler: Any, **kw: Any) -> str:
    n, host_id, hostname = (compiler.process(c, **kw) for c in element.clauses)
    head = f"""'{{"count":' || CAST({n} AS TEXT) || ',"host":' || CAST(to_json({host_id}) AS TEXT)"""
    name = f"""',"hostname":' || CAST(to_json({hostname}) AS TEXT)"""
    return f"({head} || CASE WHEN {hostname} IS NULL THEN '' ELSE {name} END || '}}')"


@compiles(_HostEntry, "sqlite")
def _host_entry_sqlite(element: _HostEntry, compiler: Any, **kw: Any) -> str:
    n, host_id, hostname = (compiler.process(c, **kw) for c in element.clauses)
    pairs = f"'count', {n}, 'host', {host_id}"
    return (
        f"CASE WHEN {hostname} IS NULL THEN json_object({pairs}) "
        f"ELSE json_object({pairs}, 'hostname', {hostname}) END"
    )


def _raw_by_host(
    flt: EventFilter, ranges: list[tuple[datetime | None, datetime | None]] | None = None
) -> sa.Select[Any]:
    """(host_id, n) of the violations in these time ranges (else the filter's period), from the
    events."""
    conds = conditions(VIOLATION, flt)
    if ranges is not None:
        conds.append(sa.or_(*[rollup.raw_range(a, b) for a, b in ranges]))
    return (
        sa.select(events.c.host_id, sa.func.count().label("n"))
        .where(*conds)
        .group_by(events.c.host_id)
        .with_hint(events, RAW_INDEX, dialect_name="sqlite")
    )


def _host_counts(conn: Connection, flt: EventFilter, limit: int | None, texts: bool = False) -> list[Any]:
    """(host_id, n, hostname) over the period: host_daily for whole days, events for the ends."""
    sp = rollup.split(flt.since, flt.until)
    parts: list[Any] = []
    raw: list[tuple[datetime | None, datetime | None]] = []
    if sp.days:
        parts.append(
            sa.select(host_daily.c.host_id, sa.func.sum(host_daily.c.n).label("n"))
            .where(
                *rollup.key_range(host_daily.c.day, *sp.days),
                *rollup.triage_condition(host_daily.c.triage, flt.triage),
            )
            .group_by(host_daily.c.host_id)
        )  # fmt: skip
        lo_day = rollup.day_start(sp.days[0])
        hi_day = rollup.day_start(sp.days[1])
        if flt.since is not None and lo_day is not None and flt.since < lo_day:
            raw.append((flt.since, lo_day))
        if hi_day is not None and (flt.until is None or hi_day < flt.until):
            raw.append((hi_day, flt.until))
    else:
        raw.append((flt.since, flt.until))
    if raw:
        parts.append(_raw_by_host(EventFilter(triage=flt.triage), raw))
    return [r for r in conn.execute(_named_counts(parts, limit, texts)).all() if r[1]]


# A period at most this long counts by host from host_daily (a row per host and day in it, read in
# order) rather than the running totals (an index seek per host that ever had a violation): at 1 M
# violations from 92,730 hosts, 7 days are 125,000 daily rows, and 92,730 seeks took 1 s on PostgreSQL.
DAILY_MAX = timedelta(days=8)


def _by_daily_rows(flt: EventFilter) -> bool:
    if flt.since is None or flt.rule_id is not None or flt.category is not None or flt.action is not None:
        return False
    return (flt.until or utcnow()) - flt.since <= DAILY_MAX


class StatsRepo:
    def __init__(self, engine: Engine, settle_hosts: Callable[[], None] = lambda: None) -> None:
        self._engine = engine
        # Lands the contact times and heartbeats this process holds (HostRepo.settle) before the
        # fleet figures read the hosts table, as a host listing does.
        self._settle_hosts = settle_hosts

    def summary(self, flt: EventFilter, *, top: int | None = None, host_texts: bool = False) -> Summary:
        """Counts by rule, category, action, triage state and host (the `top` largest, or all).

        `host_texts`: the counts by host as JSON texts (Summary.by_host_texts), for a list of every
        host with a violation -- tens of thousands in a big fleet -- written by the database."""
        if _raw_only(flt):
            return self._summary_raw(flt, top=top)
        with db_errors("summarising violations"), read_connection(self._engine) as conn:
            rows = _counts(conn, flt, ["rule_id", "category", "action", "triage"])

            def by(dim: str) -> list[Count]:
                totals: dict[str, int] = {}
                for r in rows:
                    totals[r._mapping[dim]] = totals.get(r._mapping[dim], 0) + int(r.n)
                return [Count(k, v) for k, v in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]

            texts = host_texts and top != 0
            if top is None and is_postgres(conn):
                # Every host with a violation, named and sorted: tens of thousands of rows, which
                # spill to disk in the default work_mem (4 MB); and PostgreSQL, estimating a few
                # hundred hosts from a grouped union, looked each name up alone (50,000 index
                # lookups) where one hash join reads the hosts once. For this read transaction only.
                conn.exec_driver_sql("SET LOCAL work_mem = '32MB'")
                conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
            running = None if top == 0 or _by_daily_rows(flt) else _running_host_counts(conn, flt, top, texts)
            # (host_id, n, hostname[, entry]), most first: named in the same query
            if top == 0:
                hosts_rows: list[Any] = []
            elif running is not None:
                hosts_rows = running
            elif flt.rule_id or flt.category or flt.action:
                named = conn.execute(_named_counts([_raw_by_host(flt)], top, texts)).all()
                hosts_rows = [r for r in named if r[1]]
            else:
                hosts_rows = _host_counts(conn, flt, top, texts)
            if texts:
                by_host, by_host_texts = [], [r[3] for r in hosts_rows]
            else:
                by_host = [Count(str(r[0]), int(r[1]), r[2]) for r in hosts_rows]
                by_host_texts = None
        by_triage = by("triage")
        return Summary(
            total=sum(c.count for c in by_triage),
            open=sum(c.count for c in by_triage if c.key == rollup.OPEN),
            by_rule=by("rule_id"),
            by_category=by("category"),
            by_action=by("action"),
            by_host=by_host,
            by_triage=by_triage,
            by_host_texts=by_host_texts,
        )

    def _names(self, conn: Connection, host_ids: list[str]) -> dict[str, str]:
        if not host_ids:
            return {}
        query = sa.select(hosts.c.host_id, hosts.c.hostname).where(hosts.c.host_id.in_(host_ids))
        return {r.host_id: r.hostname for r in conn.execute(query)}

    def _summary_raw(self, flt: EventFilter, *, top: int | None) -> Summary:
        """Straight from the events: for a filter by host (a few rows through its index)."""
        conds = conditions(VIOLATION, flt)

        def counts(conn: Connection, col: Any, limit: int | None = None) -> list[Count]:
            n = sa.func.count().label("n")
            query = sa.select(col, n).where(*conds).group_by(col).order_by(n.desc(), col)
            if limit is not None:
                query = query.limit(limit)
            return [Count("" if r[0] is None else str(r[0]), int(r.n)) for r in conn.execute(query)]

        with db_errors("summarising violations"), read_connection(self._engine) as conn:
            by_action = counts(conn, events.c.action)
            by_triage = counts(conn, sa.func.coalesce(events.c.triage_state, rollup.OPEN))
            by_host = counts(conn, events.c.host_id, top) if top != 0 else []
            names = self._names(conn, [c.key for c in by_host])
            summary = Summary(
                total=sum(c.count for c in by_action),
                open=sum(c.count for c in by_triage if c.key == rollup.OPEN),
                by_rule=counts(conn, events.c.rule_id),
                by_category=counts(conn, events.c.category),
                by_action=by_action,
                by_host=[Count(c.key, c.count, names.get(c.key)) for c in by_host],
                by_triage=by_triage,
            )
        return summary

    def per_day(self, flt: EventFilter) -> list[DayCount]:
        """Violations per UTC day, category and action, oldest day first."""
        with db_errors("counting violations per day"), read_connection(self._engine) as conn:
            if not _raw_only(flt):
                rows = _counts(conn, flt, ["day", "category", "action"])
                out = [DayCount(str(r.day), str(r.category), str(r.action), int(r.n)) for r in rows]
                return sorted(out, key=lambda d: (d.day, d.category, d.action))
            day = _day(conn).label("day")
            n = sa.func.count().label("n")
            query = (
                sa.select(day, events.c.category, events.c.action, n)
                .where(*conditions(VIOLATION, flt))
                .group_by(day, events.c.category, events.c.action)
                .order_by(day, events.c.category, events.c.action)
            )
            return [
                DayCount(str(r.day), str(r.category), str(r.action), int(r.n)) for r in conn.execute(query)
            ]

    def stop_times(self, flt: EventFilter) -> StopTimes:
        """How long stopped violations ran from first detection (first_seen) to the stop, on average."""
        with db_errors("timing stops"), read_connection(self._engine) as conn:
            if _raw_only(flt):
                row = conn.execute(
                    sa.select(
                        sa.func.count().label("n"), sa.func.sum(rollup.stop_expr(conn)).label("s")
                    ).where(*conditions(VIOLATION, flt), events.c.action.in_(STOPPED_ACTIONS))
                ).one()
                n, seconds = int(row.n), float(row.s or 0.0)
            else:
                rows = [r for r in _counts(conn, flt, ["action"]) if r.action in STOPPED_ACTIONS]
                n = sum(int(r.n) for r in rows)
                seconds = sum(float(r.s or 0.0) for r in rows)
        return StopTimes(stopped=n, average_seconds=round(seconds / n, 1) if n else None)

    def fleet(
        self, now: datetime, stale_after: float, current_version: int | None, *, held_limit: int = 50
    ) -> Fleet:
        fresh = hosts.c.last_seen >= now - timedelta(seconds=stale_after)
        held = sa.and_(
            hosts.c.mode == "monitor",
            sa.or_(
                hosts.c.circuit_state == "open",
                sa.and_(hosts.c.mode_reason.is_not(None), hosts.c.mode_reason != "policy mode is monitor"),
            ),
        )

        def count(conn: Connection, *conds: Any) -> int:
            return int(conn.execute(sa.select(sa.func.count()).select_from(hosts).where(*conds)).scalar_one())

        self._settle_hosts()
        with db_errors("counting hosts"), read_connection(self._engine) as conn:
            enrolled = count(conn)
            reporting = count(conn, fresh)
            enforcing = count(conn, hosts.c.mode == "enforce")
            monitor = count(conn, hosts.c.mode == "monitor")
            on_current = count(conn, hosts.c.policy_version == current_version) if current_version else 0
            n = sa.func.count().label("n")
            versions = [
                Count("none" if r[0] is None else str(r[0]), int(r.n))
                for r in conn.execute(
                    sa.select(hosts.c.policy_version, n)
                    .group_by(hosts.c.policy_version)
                    .order_by(hosts.c.policy_version.desc())
                )
            ]
            held_total = count(conn, held)
            held_rows = conn.execute(
                sa.select(hosts.c.host_id, hosts.c.hostname, hosts.c.circuit_state, hosts.c.mode_reason)
                .where(held)
                .order_by(hosts.c.hostname)
                .limit(held_limit)
            ).all()
        return Fleet(
            enrolled=enrolled,
            reporting=reporting,
            stale=enrolled - reporting,
            enforcing=enforcing,
            monitor=monitor,
            current_version=current_version,
            on_current=on_current,
            versions=versions,
            held=[
                HeldHost(r.host_id, r.hostname, r.mode_reason or "kill-rate circuit breaker open")
                for r in held_rows
            ],
            held_total=held_total,
        )
