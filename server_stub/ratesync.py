"""Rate limits shared by every server process on one database, off the request path.

Each process limits from its own buckets (server_stub/ratelimit.py). About twice a second this
exchange adds what busy keys consumed here to the shared table (`rate_usage`, one row per scope,
key and one-second slot, summed by upsert) and reads back the recent slots: for every key this
process keeps, what the others consumed since the last look is debited from the local bucket.
The rows are read only when the recent slots' sum says someone else consumed anything since
(one number: a lone process with thousands of busy keys read them all twice a second).

Bound (API.md, "Rate limits"): over any period, all processes together admit at most the
documented rate times the period plus one burst, plus what the others take during one exchange
(about 0.5-1 s at the full rate each) and, for a key new to every process, one burst per process
before the first exchange. A database failure is logged and retried; limiting goes on locally.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from endpoint_agent.errors import StoreError
from server_stub.periodic import name_os_thread
from server_stub.ratelimit import RateLimiter
from server_stub.store.ratelimits import RateUsageRepo

log = logging.getLogger(__name__)

SYNC_INTERVAL = 0.5
SLOT_SECONDS = 1
PRUNE_EVERY = 20  # exchanges (about 10 s)
KEEP_SLOTS = 5  # beyond the window: rows no process reads any more (a flood of keys stays small)


class RateSync:
    """Exchanges per-key consumption between this process's limiters and the shared table."""

    def __init__(
        self,
        repo: RateUsageRepo,
        limiters: Mapping[str, RateLimiter],
        *,
        interval: float = SYNC_INTERVAL,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._repo = repo
        self._limiters = dict(limiters)
        self._interval = interval
        self._wall = wall_clock
        self._window_slots = int(max(lim.window for lim in self._limiters.values()) // SLOT_SECONDS) + 1
        # Per (scope, key, slot): what this process added, and what of the others' it has debited.
        self._own: dict[tuple[str, str, int], int] = {}
        self._seen: dict[tuple[str, str, int], int] = {}
        # The same, summed by slot: when the table's sum over the window is no more than these,
        # nobody else consumed anything since the last look, and its rows are not read.
        self._accounted: dict[int, int] = {}
        self.rows_read = 0  # exchanges that read the window's rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rounds = 0
        self._failing = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rate-sync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        name_os_thread()  # per-thread CPU names it (server_stub/periodic.py)
        while not self._stop.wait(self._interval):
            try:
                self.exchange()
                if self._failing:
                    log.warning("shared rate limits: database reachable again")
                self._failing = False
            except StoreError as exc:
                if not self._failing:  # one line per outage, not two a second
                    log.warning("shared rate limits: %s; limiting locally until it answers", exc)
                self._failing = True

    def exchange(self) -> int:
        """One round: publish, read back, debit. Returns how many tokens were debited here."""
        slot = int(self._wall() // SLOT_SECONDS)
        counts: dict[tuple[str, str], int] = {}
        for scope, limiter in self._limiters.items():
            for key, n in limiter.take_pending().items():
                counts[(scope, key)] = n
        self._repo.add(slot, counts)
        for (scope, key), n in counts.items():
            own_key = (scope, key, slot)
            self._own[own_key] = self._own.get(own_key, 0) + n
            self._accounted[slot] = self._accounted.get(slot, 0) + n
        debited = 0
        oldest = slot - self._window_slots
        # A row's count only grows: this process's part plus the others', of which `seen` is
        # debited already. The sum equal to what is accounted here: no row has more (busy keys
        # of one process -- thousands of rows a round -- read as one number).
        if self._repo.total_since(oldest) == sum(n for s, n in self._accounted.items() if s >= oldest):
            rows = []
        else:
            rows = self._repo.since(oldest)
            self.rows_read += 1
        for row in rows:
            kept = self._limiters.get(row.scope)
            if kept is None:
                continue
            ident = (row.scope, row.key, row.slot)
            others = row.count - self._own.get(ident, 0)
            delta = others - self._seen.get(ident, 0)
            # A key this process does not keep is not marked seen: if it arrives here later,
            # the others' recent consumption is debited then.
            if delta > 0 and kept.debit(row.key, delta):
                self._seen[ident] = others
                self._accounted[row.slot] = self._accounted.get(row.slot, 0) + delta
                debited += delta
        self._forget_before(oldest)
        self._rounds += 1
        if self._rounds % PRUNE_EVERY == 0:
            self._repo.prune(oldest - KEEP_SLOTS)
        return debited

    def _forget_before(self, slot: int) -> None:
        for book in (self._own, self._seen):
            for ident in [i for i in book if i[2] < slot]:
                del book[ident]
        for old in [s for s in self._accounted if s < slot]:
            del self._accounted[old]
