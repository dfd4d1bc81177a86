"""Per-key token buckets (in process: each server process limits what it sees)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


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
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0.0 when the request may proceed; else the seconds until a token is available."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=self._burst, updated=now)
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self._rate

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token again (0.0 if it has one now); takes nothing."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def blocked(self, key: str) -> bool:
        return self.wait(key) > 0
