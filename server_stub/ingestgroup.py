"""Group commit for uploads on PostgreSQL: the node uploads that arrive together are stored in ONE
transaction and one statement (server_stub/groupcommit.py; EventRepo.insert_uploads).

An upload is queued as it arrived (a `Posting`: server_stub/ingestserve.py Posted) and decoded in
the writer thread that takes its group, just before the group is stored: no worker thread per
upload, and no hop back to the event loop in between. One the route must answer (a body that does
not validate) has the outcome None; an upload already decoded (an `Upload`) is stored as it is.

About half of a small upload's cost is fixed per transaction (a connection, the host's lock, the
statement with its rollup CTEs, the commit and its WAL flush); a group pays it once. Each writer
thread keeps its own connection (HeldConnections: no pool checkout and ping per group) and sends a
group in two round trips (BEGIN + locks + insert pipelined, then COMMIT: EventRepo.insert_uploads).
Each upload still gets its own answer: the events it stored first (a retry's ids, or an id an
earlier upload of the group carried, are not new), or its own error (an unknown host). A group the
database refuses is stored again one upload at a time, so an upload that cannot be stored fails
alone. Past MAX_QUEUE waiting uploads the request is refused at once with 503 + Retry-After.

SQLite has one writer anyway and gains nothing: uploads there are stored one by one as before, as
they are on PostgreSQL with ENDPOINT_SERVER_INGEST_GROUP=off (the server's environment).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from endpoint_agent.errors import StoreError
from server_stub.groupcommit import GroupCommit
from server_stub.store import Store
from server_stub.store.events import EventInsert, Upload

MAX_BATCH = 200  # uploads per group (x up to max_events events each: one statement)
MAX_QUEUE = 4096
# Two groups in flight: one is written while the other waits on the database's round trips. Each
# group takes its hosts' locks in sorted order, so two at once queue for a shared host, never deadlock.
# (bench fleet's ingest step, batches of 50, one run: 1 writer 4,725 events/s, 2 writers 6,035,
# 4 writers 5,205, each upload alone 5,330: one writer leaves the CPU idle between round trips.)
WRITERS = 2
INGEST_GROUP_ENV = "ENDPOINT_SERVER_INGEST_GROUP"  # "off": every upload its own transaction


class UploadsBusy(StoreError):
    """Too many uploads waiting: refused at once (503, Retry-After), nothing stored."""


class Posting(Protocol):
    """An upload queued before it was decoded: decoded by the writer that takes it."""

    def upload(self) -> Upload | None:
        """What to store; None: nothing (the route answers the request)."""

    def acked(self, stored: list[EventInsert]) -> list[str]:
        """The outcome, once the upload stored `stored` (the events new to the store)."""


Queued = Posting | Upload
Outcome = list[str] | list[EventInsert] | None
UploadGroups = GroupCommit[Queued, Outcome]


class HeldConnections:
    """Each writer thread's own connection, kept for its groups: no pool checkout (and the pool's
    ping, a round trip) per group. EventRepo.insert_uploads invalidates one that failed; the
    next group reconnects it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._local = threading.local()
        self._opened: list[Connection] = []
        self._lock = threading.Lock()

    def write(self, uploads: Sequence[Upload], now: datetime) -> list[list[EventInsert] | StoreError]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._store.engine.connect()
            except SQLAlchemyError:  # the database is away: each upload answers its own error
                return self._store.events.insert_uploads(uploads, now)
            with self._lock:
                self._opened.append(conn)
            self._local.conn = conn
        return self._store.events.insert_uploads(uploads, now, held=conn)

    def close(self) -> None:
        """After the writers stopped: back to the pool."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()


def write_queued(held: HeldConnections, queued: Sequence[Queued], now: datetime) -> list[Outcome | Exception]:
    """A group: each Posting decoded (its own error its outcome alone), what there is to store
    stored at once, each upload's outcome in order."""
    out: list[Outcome | Exception] = [None] * len(queued)
    uploads: list[Upload] = []
    which: list[int] = []
    for n, item in enumerate(queued):
        try:
            upload = item if isinstance(item, Upload) else item.upload()
        except Exception as exc:  # one upload's failure is its own
            out[n] = exc
            continue
        if upload is not None:
            uploads.append(upload)
            which.append(n)
    if uploads:
        for n, stored in zip(which, held.write(uploads, now), strict=True):
            item = queued[n]
            if isinstance(stored, Exception) or isinstance(item, Upload):
                out[n] = stored
                continue
            try:
                out[n] = item.acked(stored)
            except Exception as exc:
                out[n] = exc
    return out


class _UploadGroups(GroupCommit[Queued, Outcome]):
    def __init__(self, held: HeldConnections, *args: Any, **kwargs: Any) -> None:
        super().__init__(functools.partial(write_queued, held), *args, **kwargs)
        self._held = held

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._held.close()


def upload_groups(
    store: Store, clock: Callable[[], datetime], *, max_queue: int = MAX_QUEUE, autostart: bool = True
) -> UploadGroups | None:
    """The group writer for this store, or None (SQLite, or switched off): store each upload alone."""
    if store.engine.dialect.name != "postgresql":
        return None
    if os.environ.get(INGEST_GROUP_ENV, "").lower() == "off":
        return None
    return _UploadGroups(
        HeldConnections(store),
        clock,
        max_batch=MAX_BATCH,
        max_queue=max_queue,
        name="upload-writer",
        busy=UploadsBusy,
        autostart=autostart,
        writers=WRITERS,
    )
