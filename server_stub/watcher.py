"""Reads the cache invalidation feed (server_stub/store/changes.py) about once a second.

One indexed query per second per process. A node key changed elsewhere stops working here at the
next read: within POLL_INTERVAL plus the query's own time (about 1-2 s). While the feed cannot
be read, caches are trusted for at most TRUST_WINDOW seconds after the last successful read;
past it they answer nothing from memory (every lookup goes to the database) until the feed is
read again, and then they start empty (changes may have been pruned meanwhile).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from server_stub.keycache import NodeKeyCache
from server_stub.periodic import Periodic
from server_stub.policycache import PolicyCache
from server_stub.store.changes import HOST_KEY, POLICY, ChangeFeed

log = logging.getLogger(__name__)

CLEARED = "caches cleared, the change feed"  # bench/fleetsim/stalls.py counts these lines
POLL_INTERVAL = 1.0
TRUST_WINDOW = 5.0
KEEP_CHANGES = timedelta(minutes=10)  # far longer than TRUST_WINDOW: no live reader misses a row
_PRUNE_EVERY = 60.0
_BATCH = 10_000


class CacheWatcher:
    def __init__(
        self,
        feed: ChangeFeed,
        keys: NodeKeyCache,
        policies: PolicyCache,
        now: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._feed, self._keys, self._policies = feed, keys, policies
        self._now, self._monotonic = now, monotonic
        self._seq = 0
        self._read_at: float | None = None
        self._pruned_at = 0.0
        self._thread = Periodic("cache-watcher", POLL_INTERVAL, self.poll)

    def fresh(self) -> bool:
        """Whether the caches may answer from memory (the feed was read lately)."""
        read_at = self._read_at
        return read_at is not None and self._monotonic() - read_at <= TRUST_WINDOW

    def start_reading(self) -> None:
        """Begin at the newest change: the caches are empty, nothing before it concerns them."""
        self._seq = self._feed.newest()
        self._read_at = self._monotonic()

    def start(self) -> None:
        self.start_reading()
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def poll(self) -> None:
        started = self._monotonic()
        was_fresh = self.fresh()
        changes = self._feed.since(self._seq, _BATCH)
        if not was_fresh or len(changes) >= _BATCH:
            # Every node key is then looked up in the database again: a burst of slow requests.
            unread = started - self._read_at if self._read_at is not None else math.inf
            log.warning(
                "%s: %s; node keys and policies are read from the database again", CLEARED,
                f"not read for {unread:.1f} s" if not was_fresh else f"{len(changes)} changes at once",
            )  # fmt: skip
            self._keys.clear()
            self._policies.invalidate()
            policy_changed = True
        else:
            policy_changed = False
            for change in changes:
                if change.kind == HOST_KEY:
                    self._keys.forget(change.subject)
                elif change.kind == POLICY:
                    policy_changed = True
        if changes:
            self._seq = changes[-1].seq
        if policy_changed:
            self._policies.refresh()
        self._read_at = started  # trusted from when this read began, not when it ended
        if started - self._pruned_at >= _PRUNE_EVERY:
            self._pruned_at = started
            self._feed.prune(self._now() - KEEP_CHANGES)
