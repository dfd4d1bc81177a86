"""What can still be read from a damaged local store, and the agent event that says what could not.

The service moves a damaged store aside and starts a new one (enforcement must not stop over
it). Before it does, `salvage()` reads the events that were still waiting for upload -- the whole
table at once, or row by row past damaged pages -- so they are re-queued under their own
`event_id` (the server stores each once), and `damage_event()` builds the `store_damaged` agent
event that tells the server what was recovered and what was lost.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from endpoint_agent.errors import StoreError
from endpoint_agent.report.store import NewEvent, ViolationStore
from endpoint_contract.events import AgentEvent

logger = logging.getLogger(__name__)

MAX_ROWS = 1_000_000  # a row-by-row pass never walks further than this many sequence numbers
_COLUMNS = "seq, event_id, kind, created_at, payload, uploaded_at IS NULL"
# What the new store cannot know, whatever was recovered.
LOST_STATE = (
    "dedup state: violations of processes still running are recorded again",
    "circuit breaker state: its window starts afresh",
    "upload bookkeeping: already uploaded events are not re-sent; rejected/dropped counters restart",
)


@dataclass
class Salvage:
    pending: list[NewEvent] = field(default_factory=list)  # events not yet uploaded, readable
    unreadable_rows: int | None = 0  # None: not even the table could be read
    error: str | None = None


def salvage(path: Path, *, max_events: int = 100_000) -> Salvage:
    """The pending events readable from the damaged store at `path` (opened read-only)."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return Salvage(unreadable_rows=None, error=str(exc))
    try:
        return _read(conn, max_events)
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, max_events: int) -> Salvage:
    out = Salvage()
    try:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq").fetchall()
    except sqlite3.DatabaseError as exc:
        out.error = str(exc)
        rows = None
    if rows is None:
        try:
            low, high = conn.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
        except sqlite3.DatabaseError as exc:
            return Salvage(unreadable_rows=None, error=str(exc))
        rows = []
        if low is not None and high is not None:
            for seq in range(int(low), min(int(high), int(low) + MAX_ROWS) + 1):
                try:
                    row = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE seq=?", (seq,)).fetchone()
                except sqlite3.DatabaseError:
                    out.unreadable_rows = (out.unreadable_rows or 0) + 1
                    continue
                if row is not None:
                    rows.append(row)
    for _seq, event_id, kind, created_at, payload, pending in rows:
        if not pending:
            continue
        try:
            event = NewEvent(str(event_id), kind, datetime.fromisoformat(created_at), json.loads(payload))
        except (TypeError, ValueError):
            out.unreadable_rows = (out.unreadable_rows or 0) + 1
            continue
        if event.kind in ("violation", "agent") and isinstance(event.payload, dict):
            out.pending.append(event)
    out.pending = out.pending[-max_events:]
    return out


def damage_event(moved_to: Path, reason: str, found: Salvage, *, now: datetime | None = None) -> NewEvent:
    """The `store_damaged` agent event (wire shape: type, detail)."""
    now = now or datetime.now(UTC)
    event_id = str(uuid.uuid4())
    detail: dict[str, object] = {
        "reason": reason,
        "moved_to": str(moved_to),
        "recovered_pending_events": len(found.pending),
        # Rows that could not be read (pending or not); null when not even the table could be.
        "unreadable_events": found.unreadable_rows,
        "lost": list(LOST_STATE),
    }
    if found.unreadable_rows is None:
        detail["lost"] = ["every event not yet uploaded (the file could not be read)", *LOST_STATE]
    if found.error:
        detail["read_error"] = found.error[:500]
    event = AgentEvent(event_id=event_id, detected_at=now, type="store_damaged", detail=detail)
    return NewEvent(event_id, "agent", now, event.to_json())


def requeue_damaged(store: ViolationStore, moved_to: Path, reason: str) -> Salvage:
    """Into the new `store`: the pending events readable from the damaged one, then `store_damaged`."""
    found = salvage(moved_to)
    try:
        store.commit_tick([*found.pending, damage_event(moved_to, reason, found)])
    except StoreError as exc:
        logger.error("cannot record what the damaged store lost: %s", exc)
        return found
    unreadable = "unknown" if found.unreadable_rows is None else found.unreadable_rows
    logger.error(
        "damaged store: %d pending event(s) re-queued, %s unreadable; reported as store_damaged",
        len(found.pending),
        unreadable,
    )
    return found


__all__ = ["LOST_STATE", "Salvage", "damage_event", "requeue_damaged", "salvage"]
