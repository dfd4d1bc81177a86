"""Retention: events detected before a cutoff are deleted, a small batch per transaction.

Each batch finds up to `batch` ids through the (kind, detected_at) index in a read, then deletes
them by primary key in a short write transaction: on SQLite the write lock is held for one batch
only, on PostgreSQL the rows are locked by id, so uploads interleave with a long purge instead of
waiting for it. What is kept:
- a violation a configured export sink has not read yet (id above the lowest sink cursor): a purge
  never drops what a SIEM would otherwise receive;
- the rollups (server_stub/store/rollup.py): counts per day and hour outlive the events, so the
  compliance report and the overview keep counting a period whose rows are gone.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server_stub.store.engine import db_errors, read_connection, serialize_writers
from server_stub.store.events import AGENT, VIOLATION
from server_stub.store.tables import events

DEFAULT_BATCH = 1000


class RetentionRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def delete_batch(self, cutoff: datetime, *, export_floor: int | None, batch: int = DEFAULT_BATCH) -> int:
        """Delete up to `batch` events detected before `cutoff` (violations only up to id
        `export_floor` when it is given); returns how many were deleted (0: nothing left)."""
        with db_errors("finding expired events"), read_connection(self._engine) as conn:
            ids: list[int] = []
            for kind in (VIOLATION, AGENT):
                if len(ids) >= batch:
                    break
                conds = [events.c.kind == kind, events.c.detected_at < cutoff]
                if kind == VIOLATION and export_floor is not None:
                    conds.append(events.c.id <= export_floor)
                query = (
                    sa.select(events.c.id)
                    .where(*conds)
                    .order_by(events.c.kind, events.c.detected_at)
                    .limit(batch - len(ids))
                )
                ids += conn.execute(query).scalars().all()
        if not ids:
            return 0
        with db_errors("deleting expired events"), self._engine.begin() as conn:
            serialize_writers(conn, "endpoint-server:retention")  # replicas purge one after the other
            # detected_at never changes: the rows found above are still expired.
            done = conn.execute(sa.delete(events).where(events.c.id.in_(ids), events.c.detected_at < cutoff))
        return int(done.rowcount)


__all__ = ["DEFAULT_BATCH", "RetentionRepo"]
