"""Export cursors: how far each sink got, and a lease so one server process feeds each sink.

Several server processes may share one PostgreSQL database; each runs the exporters, but a sink
is fed by whichever process holds its lease (renewed while it works, taken over when it lapses),
so replicas do not send every violation once each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server_stub.store.engine import db_errors, dialect_insert
from server_stub.store.tables import events, export_cursors, hosts


@dataclass(frozen=True, slots=True)
class ExportRow:
    id: int
    event: dict[str, Any]  # the stored violation, with host_id and hostname filled in


class ExportRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def acquire(self, sink: str, owner: str, now: datetime, ttl: float) -> int | None:
        """Take (or renew) the lease of `sink`; its cursor when this process holds it, else None."""
        until = now + timedelta(seconds=ttl)
        with db_errors("leasing an export sink"), self._engine.begin() as conn:
            conn.execute(
                dialect_insert(conn, export_cursors)
                .values(sink=sink, last_id=0, owner=None, lease_until=None, updated_at=now)
                .on_conflict_do_nothing(index_elements=[export_cursors.c.sink])
            )
            taken = conn.execute(
                sa.update(export_cursors)
                .where(export_cursors.c.sink == sink)
                .where(
                    sa.or_(
                        export_cursors.c.owner == owner,
                        export_cursors.c.owner.is_(None),
                        export_cursors.c.lease_until < now,
                    )
                )
                .values(owner=owner, lease_until=until)
                .returning(export_cursors.c.last_id)
            ).scalar_one_or_none()
        return None if taken is None else int(taken)

    def advance(self, sink: str, owner: str, last_id: int, now: datetime) -> bool:
        """Move the cursor past `last_id`; False when another process took the lease meanwhile."""
        with db_errors("advancing an export cursor"), self._engine.begin() as conn:
            done = conn.execute(
                sa.update(export_cursors)
                .where(export_cursors.c.sink == sink, export_cursors.c.owner == owner)
                .where(export_cursors.c.last_id < last_id)
                .values(last_id=last_id, updated_at=now)
            )
        return bool(done.rowcount)

    def release(self, sink: str, owner: str) -> None:
        with db_errors("releasing an export sink"), self._engine.begin() as conn:
            conn.execute(
                sa.update(export_cursors)
                .where(export_cursors.c.sink == sink, export_cursors.c.owner == owner)
                .values(owner=None, lease_until=None)
            )

    def violations_after(self, after_id: int, limit: int, received_before: datetime) -> list[ExportRow]:
        """Violations stored after `after_id`, oldest first, received before `received_before`."""
        query = (
            sa.select(events.c.id, events.c.host_id, events.c.data, hosts.c.hostname)
            .join(hosts, hosts.c.host_id == events.c.host_id)
            .where(events.c.id > after_id, events.c.kind == "violation")
            .where(events.c.received_at < received_before)
            .order_by(events.c.id)
            .limit(limit)
        )
        with db_errors("reading violations to export"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            data = dict(row.data)
            data["host_id"] = row.host_id
            data.setdefault("hostname", row.hostname)
            out.append(ExportRow(id=int(row.id), event=data))
        return out

    def lowest_cursor(self, sinks: Sequence[str]) -> int | None:
        """How far the slowest of these sinks got (0 for one that never ran); None without sinks.
        Retention (server_stub/store/retention.py) keeps every violation after it."""
        if not sinks:
            return None
        with db_errors("reading export cursors"), self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(export_cursors.c.sink, export_cursors.c.last_id).where(
                    export_cursors.c.sink.in_(sinks)
                )
            ).all()
        got = {row.sink: int(row.last_id) for row in rows}
        return min(got.get(sink, 0) for sink in sinks)

    def latest_id(self) -> int:
        with db_errors("reading the newest violation"), self._engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(events.c.id)).where(events.c.kind == "violation")
            ).scalar_one()
        return int(value or 0)


__all__ = ["ExportRepo", "ExportRow"]
