"""Aggregates for the summary, the console and the compliance report: counted by the database.

Every figure is one GROUP BY over the events in a period, which the covering index
ix_events_console (kind, detected_at, category, action, rule_id, host_id, triage_state) answers
without reading the rows; Python only shapes the (small) results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from server_stub.store.engine import db_errors, is_postgres, read_connection
from server_stub.store.events import VIOLATION, EventFilter, conditions
from server_stub.store.tables import events, hosts

# What counts as "stopped" for the detection-to-stop time.
STOPPED_ACTIONS = ("killed", "suspended", "denied", "connection_blocked")
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
    max_seconds: float | None


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


def _seconds_between(conn: Connection, later: Any, earlier: Any) -> Any:
    if is_postgres(conn):
        return sa.func.extract("epoch", later - earlier)
    return (sa.func.julianday(later) - sa.func.julianday(earlier)) * 86400.0


class StatsRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def summary(self, flt: EventFilter, *, top: int | None = None) -> Summary:
        """Counts by rule, category, action, triage state and host (the `top` largest, or all)."""
        conds = conditions(VIOLATION, flt)

        def counts(conn: Connection, col: Any, limit: int | None = None) -> list[Count]:
            n = sa.func.count().label("n")
            query = sa.select(col, n).where(*conds).group_by(col).order_by(n.desc(), col)
            if limit is not None:
                query = query.limit(limit)
            return [Count("" if r[0] is None else str(r[0]), int(r.n)) for r in conn.execute(query)]

        with db_errors("summarising violations"), read_connection(self._engine) as conn:
            by_action = counts(conn, events.c.action)
            by_triage = counts(conn, sa.func.coalesce(events.c.triage_state, "open"))
            by_host = counts(conn, events.c.host_id, top)
            names = {}
            if by_host:
                names = dict(
                    conn.execute(
                        sa.select(hosts.c.host_id, hosts.c.hostname).where(
                            hosts.c.host_id.in_([c.key for c in by_host])
                        )
                    ).all()
                )
            summary = Summary(
                total=sum(c.count for c in by_action),
                open=sum(c.count for c in by_triage if c.key == "open"),
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
        """How long stopped violations ran from first detection (first_seen) to the stop."""
        conds = [*conditions(VIOLATION, flt), events.c.action.in_(STOPPED_ACTIONS)]
        with db_errors("timing stops"), read_connection(self._engine) as conn:
            secs = _seconds_between(
                conn, events.c.detected_at, sa.func.coalesce(events.c.first_seen, events.c.detected_at)
            )
            row = conn.execute(
                sa.select(
                    sa.func.count().label("n"), sa.func.avg(secs).label("avg"), sa.func.max(secs).label("max")
                ).where(*conds)
            ).one()
        return StopTimes(
            stopped=int(row.n),
            average_seconds=None if row.avg is None else max(0.0, round(float(row.avg), 1)),
            max_seconds=None if row.max is None else max(0.0, round(float(row.max), 1)),
        )

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
