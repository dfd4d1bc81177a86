"""`serve --retention-days N`: a background thread purges events older than N days, a small batch at
a time (server_stub/store/retention.py), at start and then every hour, pausing between batches so
uploads and reads interleave with a long purge."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from endpoint_agent.errors import StoreError
from server_stub.store.retention import DEFAULT_BATCH, RetentionRepo

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 3600.0
PAUSE_SECONDS = 0.05  # between batches: the database's write lock is free for others this long


class RetentionService:
    def __init__(
        self,
        repo: RetentionRepo,
        *,
        days: float,
        export_floor: Callable[[], int | None],
        clock: Callable[[], datetime],
        interval: float = INTERVAL_SECONDS,
        batch: int = DEFAULT_BATCH,
        pause: float = PAUSE_SECONDS,
    ) -> None:
        self.repo, self.days, self.export_floor, self.clock = repo, days, export_floor, clock
        self.interval, self.batch, self.pause = interval, batch, pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run_once(self) -> int:
        """Purge everything expired now, batch by batch; returns how many events were deleted."""
        cutoff = self.clock() - timedelta(days=self.days)
        floor = self.export_floor()
        deleted = 0
        while not self._stop.is_set():
            done = self.repo.delete_batch(cutoff, export_floor=floor, batch=self.batch)
            deleted += done
            if done < self.batch:
                break
            self._stop.wait(self.pause)
        if deleted:
            log.info("retention: deleted %d events detected before %s", deleted, cutoff.isoformat())
        return deleted

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except StoreError as exc:  # the database is down: try again next round
                log.warning("retention: %s", exc)
            self._stop.wait(self.interval)
