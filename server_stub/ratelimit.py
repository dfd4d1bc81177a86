"""Per-key token buckets, kept in each process and reconciled across processes (server_stub/ratesync.py).

Every request is admitted or refused from memory: no database round trip. A process also counts
what each key consumed here; a background exchange (about twice a second) publishes the busy
keys' counts to a shared table and debits every local bucket by what the other processes (workers
and replicas on one database) consumed. Each bucket thus follows the one global bucket, late by
at most one exchange.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

# Consumption smaller than this share of the burst within a sharing window is never published:
# quiet keys (a host polling twice a minute) cost the shared table nothing.
SHARE_FRACTION = 0.05


# A bucket is a plain tuple (tokens, updated, pending: taken here and not yet published, pending
# since), replaced on each change: a tuple of numbers is untracked by the collector after its first
# young collection, where an object would stay tracked -- a limiter keeps up to max_keys buckets
# (a fleet's hosts), and they were most of what every full collection walked (18,000 of the 23,000
# objects one kept during an enrollment run).
_Bucket = tuple[float, float, int, float]


class RateLimiter:
    """`rate` tokens per second up to `burst`, per key; remembers at most `max_keys` keys.

    The least recently used key is forgotten first, so a flood of made-up credentials costs
    bounded memory (a forgotten key simply starts again with a full bucket).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # Keys whose unpublished consumption reached share_threshold: all take_pending visits.
        # (It once walked every bucket under the lock, twice a second: ~2 ms per 10,000 keys, a
        # fleet's hosts and addresses, with the event loop's acquire waiting on that lock.)
        self._busy: dict[str, None] = {}
        self._lock = threading.Lock()
        self.share_threshold = max(1, math.ceil(burst * SHARE_FRACTION))
        # Older unpublished consumption no longer matters to anyone: the bucket has refilled.
        self.window = max(5.0, burst / rate) + 2.0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def acquire(self, key: str) -> float:
        """0.0 when the request may proceed; else the seconds until a token is available."""
        now = self._clock()
        with self._lock:
            tokens, _, pending, since = self._refilled(key, now)
            if tokens < 1.0:
                return (1.0 - tokens) / self._rate
            if pending and now - since > self.window:
                pending = 0  # a quiet key: too little, too long ago to matter
            if pending == 0:
                since = now
            self._buckets[key] = (tokens - 1.0, now, pending + 1, since)
            if pending + 1 == self.share_threshold:
                self._busy[key] = None
            return 0.0

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token again (0.0 if it has one now); takes nothing."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def blocked(self, key: str) -> bool:
        return self.wait(key) > 0

    # --- sharing with other processes (server_stub/ratesync.py) ---------------------------------

    def take_pending(self, limit: int = 5_000) -> dict[str, int]:
        """What busy keys consumed here since last asked (at least share_threshold each); reset."""
        out: dict[str, int] = {}
        with self._lock:
            for key in list(self._busy):
                if len(out) >= limit:
                    break  # the rest next time
                del self._busy[key]
                bucket = self._buckets.get(key)
                if bucket is not None and bucket[2] >= self.share_threshold:
                    out[key] = bucket[2]
                    self._buckets[key] = (bucket[0], bucket[1], 0, bucket[3])
        return out

    def debit(self, key: str, tokens: int) -> bool:
        """Take what other processes consumed for `key`; False (nothing done) if `key` is not kept here.

        The bucket may go below zero (the wait grows): the debt is kept, else processes that
        flood one key together would each be forgiven part of the others' share. It never goes
        below one window's refill, so a key is never shut out for longer than about a window.
        """
        now = self._clock()
        with self._lock:
            if key not in self._buckets:
                return False
            left, updated, pending, since = self._refilled(key, now)
            self._buckets[key] = (max(-self._rate * self.window, left - tokens), updated, pending, since)
            return True

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float) -> _Bucket:
        """`key`'s bucket refilled up to `now` (a full one for a new key), and stored so."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = (self._burst, now, 0, 0.0)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                forgotten, _ = self._buckets.popitem(last=False)
                self._busy.pop(forgotten, None)
            return bucket
        self._buckets.move_to_end(key)
        tokens, updated, pending, since = bucket
        bucket = (min(self._burst, tokens + (now - updated) * self._rate), now, pending, since)
        self._buckets[key] = bucket
        return bucket
