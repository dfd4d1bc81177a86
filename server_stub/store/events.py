"""Violations and agent events: idempotent batch insert, filtered cursor pages, summary counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server_stub.store.engine import db_errors, dialect_insert, read_connection
from server_stub.store.tables import events, hosts

VIOLATION = "violation"
AGENT = "agent"


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    kind: str
    detected_at: datetime
    data: dict[str, Any]
    rule_id: str | None = None
    category: str | None = None
    action: str | None = None
    type: str | None = None


@dataclass(frozen=True, slots=True)
class EventFilter:
    since: datetime | None = None
    until: datetime | None = None
    host: str | None = None  # host id or hostname
    rule_id: str | None = None
    category: str | None = None
    action: str | None = None
    type: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    host_id: str
    hostname: str
    received_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Count:
    key: str
    count: int
    label: str | None = None  # hostname, for counts by host


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    by_rule: list[Count]
    by_category: list[Count]
    by_action: list[Count]
    by_host: list[Count]


def _conditions(kind: str, flt: EventFilter) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = [events.c.kind == kind]
    if flt.since is not None:
        conds.append(events.c.detected_at >= flt.since)
    if flt.until is not None:
        conds.append(events.c.detected_at < flt.until)
    if flt.host is not None:
        conds.append(sa.or_(events.c.host_id == flt.host, hosts.c.hostname == flt.host))
    for column, value in (
        (events.c.rule_id, flt.rule_id),
        (events.c.category, flt.category),
        (events.c.action, flt.action),
        (events.c.type, flt.type),
    ):
        if value is not None:
            conds.append(column == value)
    return conds


class EventRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def insert_batch(self, host_id: str, batch: Sequence[NewEvent], now: datetime) -> None:
        """Store every event not stored yet for this host; all or nothing."""
        unique: dict[str, NewEvent] = {}
        for ev in batch:
            unique.setdefault(ev.event_id, ev)
        if not unique:
            return
        rows = [
            {
                "host_id": host_id,
                "event_id": ev.event_id,
                "kind": ev.kind,
                "received_at": now,
                "detected_at": ev.detected_at,
                "rule_id": ev.rule_id,
                "category": ev.category,
                "action": ev.action,
                "type": ev.type,
                "data": ev.data,
            }
            for ev in unique.values()
        ]
        with db_errors("storing events"), self._engine.begin() as conn:
            # A retried upload carries ids already stored: skip them (first copy wins).
            stmt = dialect_insert(conn, events).on_conflict_do_nothing(
                index_elements=[events.c.host_id, events.c.event_id]
            )
            conn.execute(stmt, rows)

    def page(
        self, kind: str, flt: EventFilter, *, after_id: int, limit: int
    ) -> tuple[list[StoredEvent], bool]:
        """Up to `limit` events with id > after_id in receive order; and whether more follow."""
        query = (
            sa.select(events.c.id, events.c.host_id, hosts.c.hostname, events.c.received_at, events.c.data)
            .select_from(events.join(hosts, events.c.host_id == hosts.c.host_id))
            .where(*_conditions(kind, flt), events.c.id > after_id)
            .order_by(events.c.id)
            .limit(limit + 1)
        )
        with db_errors("listing events"), read_connection(self._engine) as conn:
            rows = conn.execute(query).all()
        items = [
            StoredEvent(
                id=r.id, host_id=r.host_id, hostname=r.hostname, received_at=r.received_at, data=r.data
            )
            for r in rows[:limit]
        ]
        return items, len(rows) > limit

    def summary(self, flt: EventFilter) -> Summary:
        base = events.join(hosts, events.c.host_id == hosts.c.host_id)
        conds = _conditions(VIOLATION, flt)

        def counts(*cols: Any) -> list[Any]:
            n = sa.func.count().label("n")
            query = (
                sa.select(*cols, n).select_from(base).where(*conds).group_by(*cols).order_by(n.desc(), *cols)
            )
            return list(conn.execute(query).all())

        with db_errors("summarising violations"), read_connection(self._engine) as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(base).where(*conds)).scalar_one()
            by_rule = [Count(str(r[0]), r.n) for r in counts(events.c.rule_id)]
            by_category = [Count(str(r[0]), r.n) for r in counts(events.c.category)]
            by_action = [Count(str(r[0]), r.n) for r in counts(events.c.action)]
            by_host = [Count(str(r[0]), r.n, label=r[1]) for r in counts(events.c.host_id, hosts.c.hostname)]
        return Summary(
            total=int(total), by_rule=by_rule, by_category=by_category, by_action=by_action, by_host=by_host
        )
