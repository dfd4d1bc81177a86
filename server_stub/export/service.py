"""The export runner: one thread per sink, each following its own cursor through the stored violations.

    loop: hold the sink's lease -> read violations after the cursor (settled ones, oldest first)
          -> deliver -> move the cursor past what was delivered -> again at once, or sleep when idle

A destination that is down is retried with full-jitter backoff (capped at the sink's max_backoff,
never sooner than a Retry-After it gave); meanwhile violations wait in the database, so an outage
of any length is caught up in order, at least once, with the event_id as the dedup key downstream.
`health()` is what /api/v1/healthz shows: per sink its state, lag, last success and last error.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from endpoint_agent.errors import StoreError
from endpoint_contract.timestamps import iso_utc_or_none
from server_stub.export.config import ExportConfig, Sink
from server_stub.export.sinks import DeliveryFailed, Destination, open_destination
from server_stub.store.exports import ExportRepo

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
BASE_BACKOFF = 1.0


@dataclass
class SinkHealth:
    name: str
    type: str
    state: str = "starting"  # ok | retrying | standby (another server holds it) | stopped
    cursor: int = 0
    delivered: int = 0
    skipped: int = 0
    failures: int = 0  # consecutive
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_json(self, latest: int) -> dict[str, Any]:
        with self.lock:
            return {
                "type": self.type,
                "state": self.state,
                "ok": self.state in ("ok", "standby", "starting"),
                "lag": max(0, latest - self.cursor) if self.state != "standby" else None,
                "delivered": self.delivered,
                "skipped": self.skipped,
                "consecutive_failures": self.failures,
                "last_success": iso_utc_or_none(self.last_success),
                "last_error": self.last_error,
                "last_error_at": iso_utc_or_none(self.last_error_at),
            }


class SinkRunner:
    def __init__(
        self,
        sink: Sink,
        repo: ExportRepo,
        config: ExportConfig,
        *,
        product_version: str,
        owner: str,
        clock: Callable[[], datetime],
        open_dest: Callable[[Sink, str], Destination] = open_destination,
    ) -> None:
        self.sink, self.repo, self.config = sink, repo, config
        self.owner, self.clock = owner, clock
        self.health = SinkHealth(sink.name, sink.type)
        self._dest = open_dest(sink, product_version)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"export-{sink.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._dest.close()
        with contextlib.suppress(StoreError):
            self.repo.release(self.sink.name, self.owner)
        with self.health.lock:
            self.health.state = "stopped"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self.step()
            except Exception:  # a sink never dies of one bad round
                log.exception("export %s: unexpected failure", self.sink.name)
                pause = self._failed("internal error (see the server log)", None)
            self._stop.wait(pause)

    def step(self) -> float:
        """One round; how long to wait before the next."""
        now = self.clock()
        cursor = self.repo.acquire(self.sink.name, self.owner, now, LEASE_SECONDS)
        if cursor is None:
            with self.health.lock:
                self.health.state = "standby"
            return LEASE_SECONDS / 3
        settled = now - timedelta(seconds=self.config.settle_seconds)
        rows = self.repo.violations_after(cursor, self.sink.batch_size, settled)
        with self.health.lock:
            self.health.cursor = cursor
        if not rows:
            with self.health.lock:
                if self.health.state in ("starting", "standby"):
                    self.health.state = "ok"
            return self.config.poll_interval
        try:
            skipped = self._dest.deliver([r.event for r in rows])
        except DeliveryFailed as exc:
            if exc.delivered:
                self._advance(rows[exc.delivered - 1].id, exc.delivered, 0)
            return self._failed(str(exc), exc.retry_after)
        self._advance(rows[-1].id, len(rows) - skipped, skipped)
        return 0.0 if len(rows) == self.sink.batch_size else self.config.poll_interval

    def _advance(self, last_id: int, delivered: int, skipped: int) -> None:
        self.repo.advance(self.sink.name, self.owner, last_id, self.clock())
        with self.health.lock:
            h = self.health
            h.cursor, h.delivered, h.skipped = last_id, h.delivered + delivered, h.skipped + skipped
            h.failures, h.state, h.last_success = 0, "ok", self.clock()

    def _failed(self, message: str, retry_after: float | None) -> float:
        with self.health.lock:
            h = self.health
            h.failures += 1
            h.state, h.last_error, h.last_error_at = "retrying", message, self.clock()
            failures = h.failures
        if failures == 1 or failures % 10 == 0:
            log.warning("export %s: %s (attempt %d, will retry)", self.sink.name, message, failures)
        cap = min(self.sink.max_backoff, BASE_BACKOFF * 2 ** min(failures, 16))
        pause = random.uniform(0, cap)
        return max(pause, retry_after or 0.0)


class ExportService:
    """Every configured sink's runner; started with the server, stopped with it."""

    def __init__(
        self,
        config: ExportConfig,
        repo: ExportRepo,
        *,
        product_version: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        open_dest: Callable[[Sink, str], Destination] = open_destination,
    ) -> None:
        owner = f"{uuid.uuid4().hex[:12]}-{time.monotonic_ns() % 10**6}"
        self.repo = repo
        self.runners = [
            SinkRunner(
                sink,
                repo,
                config,
                product_version=product_version,
                owner=owner,
                clock=clock,
                open_dest=open_dest,
            )
            for sink in config.sinks
        ]

    def start(self) -> None:
        for runner in self.runners:
            runner.start()

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()

    def health(self) -> dict[str, dict[str, Any]]:
        if not self.runners:
            return {}
        try:
            latest = self.repo.latest_id()
        except StoreError:
            latest = 0
        return {r.sink.name: r.health.to_json(latest) for r in self.runners}


__all__ = ["ExportService", "SinkHealth", "SinkRunner"]
