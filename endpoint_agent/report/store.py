"""The local violation store: an append-only SQLite outbox (WAL) under the state dir.

Tables:
    events  one row per violation or agent event (kind "violation" | "agent"), in the order they
            happened; the JSON payload and event_id never change (a trigger refuses updates);
            `uploaded_at` is set when the server acknowledged the event_id, `last_seen` while the
            violating process keeps running (both outside the payload).
    seen    dedup keys of live process instances: (rule_id, pid, create_time) -> event, outcome,
            first/last seen. Persisted with the events they produced, in the same transaction,
            so a restart neither loses nor repeats a violation.
    meta    small JSON values: dropped-event counter, circuit breaker state.

Bounded by count and bytes (`StoreLimits`): when full, uploaded events go first, then the oldest
pending ones, and every pending event dropped is counted. When the disk
has less free space than `min_free_bytes`, the store stops growing: new events replace old ones.

Every sqlite3 error becomes a `StoreError`; callers never see sqlite3.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from endpoint_agent.decide import SeenEntry, SeenKey
from endpoint_agent.errors import StoreError
from endpoint_agent.types import Outcome
from endpoint_contract.timestamps import iso_utc

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EventKind = Literal["violation", "agent"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind IN ('violation', 'agent')),
    created_at  TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    uploaded_at TEXT,
    last_seen   TEXT
);
CREATE INDEX IF NOT EXISTS events_pending ON events (seq) WHERE uploaded_at IS NULL;
CREATE TRIGGER IF NOT EXISTS events_append_only
    BEFORE UPDATE OF event_id, kind, created_at, payload, size ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE IF NOT EXISTS seen (
    rule_id        TEXT    NOT NULL,
    pid            INTEGER NOT NULL,
    create_time    REAL    NOT NULL,
    event_id       TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    policy_version INTEGER NOT NULL,
    first_seen     TEXT    NOT NULL,
    last_seen      TEXT    NOT NULL,
    PRIMARY KEY (rule_id, pid, create_time)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoreCorrupt(StoreError):
    """The database file is damaged (not an I/O or locking problem)."""


@dataclass(frozen=True)
class StoreLimits:
    max_events: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class NewEvent:
    """An event to append; `payload` is the JSON object uploaded as is (it carries event_id).

    It is encoded once, here, when stored; the uploader sends that text without re-encoding it.
    """

    event_id: str
    kind: EventKind
    created_at: datetime
    payload: dict[str, object]


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    kind: EventKind
    created_at: str
    payload: dict[str, Any]
    size: int
    uploaded_at: str | None
    last_seen: str | None
    text: str = ""  # the payload's JSON exactly as stored: what the uploader sends


@dataclass(frozen=True)
class StoreCounts:
    total: int
    pending: int
    uploaded: int
    dropped: int
    bytes: int

    def to_json(self) -> dict[str, int]:
        return {
            "total": self.total,
            "pending": self.pending,
            "uploaded": self.uploaded,
            "dropped": self.dropped,
            "bytes": self.bytes,
        }


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"violation store: {what}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"violation store: {what}: {exc.strerror or exc}") from exc


class ViolationStore:
    """Thread-safe: the scan job and a later uploader job share one connection under a lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path, limits: StoreLimits, *, read_only: bool) -> None:
        self._conn = conn
        self._path = path
        self._limits = limits
        self._read_only = read_only
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Sequence[NewEvent]], None]] = []

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, limits: StoreLimits | None = None) -> ViolationStore:
        """Open for writing, creating the file (mode 0600) and its schema when missing."""
        with _translated(f"cannot open {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: a violation reported as recorded survives a power cut, not only a crash.
                conn.execute("PRAGMA synchronous=FULL")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"violation store {path}: schema version {version} is newer than this agent"
                        f" ({SCHEMA_VERSION})"
                    )
                check = conn.execute("PRAGMA quick_check(1)").fetchone()
                if check is None or check[0] != "ok":
                    raise StoreCorrupt(
                        f"violation store {path}: damaged ({check[0] if check else 'no answer'})"
                    )
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except sqlite3.DatabaseError as exc:
                conn.close()
                if isinstance(exc, sqlite3.OperationalError):
                    raise  # locked, I/O, disk full: not the file's fault
                raise StoreCorrupt(f"violation store {path}: damaged: {exc}") from exc
            except BaseException:
                conn.close()
                raise
        return cls(conn, path, limits or StoreLimits(), read_only=False)

    @classmethod
    def open_existing(cls, path: Path) -> ViolationStore | None:
        """Open for reading (`violations`, `status`); None when no agent ever wrote one here."""
        if not path.exists():
            return None
        with _translated(f"cannot open {path}"):
            try:
                conn = sqlite3.connect(
                    f"{path.as_uri()}?mode=rw",
                    uri=True,
                    timeout=10,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.OperationalError:
                # Not ours to write (another user's agent): read-only still shows what is committed.
                conn = sqlite3.connect(
                    f"{path.as_uri()}?mode=ro",
                    uri=True,
                    timeout=10,
                    isolation_level=None,
                    check_same_thread=False,
                )
            try:
                has_events = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'"
                ).fetchone()
            except BaseException:
                conn.close()
                raise
            if not has_events:
                conn.close()
                return None
        return cls(conn, path, StoreLimits(), read_only=True)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        with self._lock, _translated("close"):
            self._conn.close()

    def __enter__(self) -> ViolationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def on_commit(self, listener: Callable[[Sequence[NewEvent]], None]) -> None:
        """Call `listener` with the events of every commit, once they are durable (the event log)."""
        self._listeners.append(listener)

    def append(self, events: Sequence[NewEvent]) -> None:
        self.commit_tick(events)

    def commit_tick(
        self,
        events: Sequence[NewEvent] = (),
        *,
        seen_upserts: Sequence[SeenEntry] = (),
        seen_deletes: Iterable[SeenKey] = (),
        meta: dict[str, object] | None = None,
        dropped: int = 0,
    ) -> None:
        """Everything one scan produced, in one transaction: durable when this returns.

        `dropped`: events the caller had to drop before they could be written (a full disk); added
        to the dropped-events counter the uploader reports."""
        self._writable()
        rows = [
            (e.event_id, e.kind, iso_utc(e.created_at), text, len(text.encode()))
            for e in events
            for text in [json.dumps(e.payload, sort_keys=True, default=str)]
        ]
        low_disk = bool(rows) and self._disk_is_low()
        with self._lock, _translated("cannot record events"), self._transaction():
            before = self._totals() if low_disk else None
            self._conn.executemany(
                "INSERT OR IGNORE INTO events (event_id, kind, created_at, payload, size)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.executemany(
                "INSERT INTO seen (rule_id, pid, create_time, event_id, outcome, policy_version, first_seen,"
                " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (rule_id, pid, create_time) DO UPDATE SET event_id=excluded.event_id,"
                " outcome=excluded.outcome, policy_version=excluded.policy_version,"
                " last_seen=excluded.last_seen",
                [
                    (
                        s.rule_id,
                        s.pid,
                        s.create_time,
                        s.event_id,
                        s.outcome.value,
                        s.policy_version,
                        iso_utc(s.first_seen),
                        iso_utc(s.last_seen),
                    )
                    for s in seen_upserts
                ],
            )
            self._conn.executemany(
                "UPDATE events SET last_seen=? WHERE event_id=?",
                [(iso_utc(s.last_seen), s.event_id) for s in seen_upserts],
            )
            self._conn.executemany(
                "DELETE FROM seen WHERE rule_id=? AND pid=? AND create_time=?", list(seen_deletes)
            )
            for key, value in (meta or {}).items():
                self._set_meta(key, value)
            if dropped > 0:
                self._count_dropped(dropped)
            if rows:
                self._enforce_limits(before, new_count=len(rows), new_bytes=sum(r[4] for r in rows))
        if events:
            for listener in self._listeners:
                listener(events)

    def ack(self, event_ids: Iterable[str], *, at: datetime | None = None) -> int:
        """Mark events the server stored; returns how many were pending."""
        self._writable()
        ids = list(event_ids)
        at = at or datetime.now(UTC)
        with self._lock, _translated("cannot acknowledge events"), self._transaction():
            cur = self._conn.executemany(
                "UPDATE events SET uploaded_at=? WHERE event_id=? AND uploaded_at IS NULL",
                [(iso_utc(at), i) for i in ids],
            )
            return cur.rowcount

    def set_meta(self, key: str, value: object) -> None:
        self._writable()
        with self._lock, _translated("cannot write state"), self._transaction():
            self._set_meta(key, value)

    # -- reading -------------------------------------------------------------------------------

    def pending(self, limit: int = 100, max_bytes: int = 1024 * 1024) -> list[StoredEvent]:
        """The oldest events not yet uploaded, at most `limit` and `max_bytes` (always at least one)."""
        out: list[StoredEvent] = []
        total = 0
        with self._lock, _translated("cannot read pending events"):
            cur = self._conn.execute(
                "SELECT seq, event_id, kind, created_at, payload, size, uploaded_at, last_seen FROM events"
                " WHERE uploaded_at IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            )
            for row in cur:
                if out and total + row[5] > max_bytes:
                    break
                out.append(_event(row))
                total += row[5]
        return out

    def events(self, kind: EventKind | None = None, limit: int | None = None) -> list[StoredEvent]:
        """Recorded events, oldest first (the newest `limit` when given)."""
        query = "SELECT seq, event_id, kind, created_at, payload, size, uploaded_at, last_seen FROM events"
        params: list[object] = []
        if kind is not None:
            query += " WHERE kind=?"
            params.append(kind)
        query += " ORDER BY seq DESC" + (" LIMIT ?" if limit is not None else "")
        if limit is not None:
            params.append(limit)
        with self._lock, _translated("cannot read events"):
            rows = self._conn.execute(query, params).fetchall()
        return [_event(r) for r in reversed(rows)]

    def load_seen(self) -> list[SeenEntry]:
        with self._lock, _translated("cannot read dedup state"):
            rows = self._conn.execute(
                "SELECT rule_id, pid, create_time, event_id, outcome, policy_version, first_seen, last_seen"
                " FROM seen"
            ).fetchall()
        out = []
        for r in rows:
            try:
                first_seen, last_seen = datetime.fromisoformat(r[6]), datetime.fromisoformat(r[7])
                out.append(SeenEntry(r[0], r[1], r[2], r[3], Outcome(r[4]), r[5], first_seen, last_seen))
            except ValueError:
                logger.warning("ignoring a damaged dedup entry for rule %s pid %s", r[0], r[1])
        return out

    def get_meta(self, key: str) -> object | None:
        with self._lock, _translated("cannot read state"):
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return None

    def counts(self) -> StoreCounts:
        with self._lock, _translated("cannot count events"):
            total, size, pending = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(*) - COUNT(uploaded_at) FROM events"
            ).fetchone()
        dropped = self.get_meta("dropped")
        return StoreCounts(
            total=total,
            pending=pending,
            uploaded=total - pending,
            dropped=dropped if isinstance(dropped, int) else 0,
            bytes=size,
        )

    # -- internals -----------------------------------------------------------------------------

    def _writable(self) -> None:
        if self._read_only:
            raise StoreError(f"violation store {self._path}: opened read-only")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _set_meta(self, key: str, value: object) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(value, sort_keys=True, default=str)),
        )

    def _totals(self) -> tuple[int, int]:
        count, size = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events").fetchone()
        return int(count), int(size)

    def _disk_is_low(self) -> bool:
        try:
            free = shutil.disk_usage(self._path.parent).free
        except OSError:
            return False
        if free < self._limits.min_free_bytes:
            logger.warning(
                "less than %d bytes free under %s: the store stops growing", free, self._path.parent
            )
            return True
        return False

    def _enforce_limits(self, before: tuple[int, int] | None, *, new_count: int, new_bytes: int) -> None:
        max_count, max_bytes = self._limits.max_events, self._limits.max_bytes
        if before is not None:
            max_count = min(max_count, max(before[0], new_count))
            max_bytes = min(max_bytes, max(before[1], new_bytes))
        count, size = self._totals()
        if count <= max_count and size <= max_bytes:
            return
        # Uploaded events are safe on the server: they go first. Then the oldest pending ones.
        victims: list[int] = []
        dropped = 0
        cur = self._conn.execute(
            "SELECT seq, size, uploaded_at IS NULL FROM events ORDER BY uploaded_at IS NULL, seq"
        )
        for seq, row_size, is_pending in cur:
            if count <= max_count and size <= max_bytes:
                break
            victims.append(seq)
            count -= 1
            size -= row_size
            dropped += int(is_pending)
        cur.close()
        self._conn.executemany("DELETE FROM events WHERE seq=?", [(s,) for s in victims])
        if dropped:
            self._count_dropped(dropped)
            logger.warning("violation store full: dropped the %d oldest pending event(s)", dropped)

    def _count_dropped(self, dropped: int) -> None:
        previous = self._conn.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        self._set_meta("dropped", (int(previous[0]) if previous else 0) + dropped)


def _event(row: Sequence[Any]) -> StoredEvent:
    try:
        payload = json.loads(row[4])
    except json.JSONDecodeError:
        payload = None
    intact = isinstance(payload, dict)
    return StoredEvent(
        seq=row[0],
        event_id=row[1],
        kind=row[2],
        created_at=row[3],
        payload=payload if intact else {"event_id": row[1], "damaged": True},
        size=row[5],
        uploaded_at=row[6],
        last_seen=row[7],
        text=row[4] if intact else "",
    )


__all__ = [
    "EventKind",
    "NewEvent",
    "StoreCorrupt",
    "StoreCounts",
    "StoreLimits",
    "StoredEvent",
    "ViolationStore",
]
