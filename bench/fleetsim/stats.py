"""What the simulated fleet saw, per request kind: outcomes, latencies, events acknowledged.

    rec = Recorder()
    rec.add("policy", 304, 0.004)            # status code, seconds
    rec.add("events", TIMEOUT, 15.0)
    rec.late(0.003)                          # a timer of the simulator fired 3 ms after its time
    merged = Recorder.merged([rec, other])   # from several simulator processes
    merged.kinds["policy"].percentile(0.95)

Latencies go to fixed log-spaced buckets (Histogram): adding one is an index and an increment,
memory and merging cost the same at a thousand requests or ten million, and a percentile is
within 1 % of the exact one. Recorders are plain data (picklable) so simulator processes send
theirs to the driver.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

SLOW = 0.5
SLOW_KEPT = 20
TIMEOUT = "timeout"  # no complete answer within the agent's timeout
ERROR = "error"  # refused, reset or closed connection
Outcome = int | str

_LOW = 1e-6  # 1 us: anything faster lands in the first bucket
_GROWTH = 1.02  # each bucket 2 % wider than the one before: its middle is within 1 % of any value in it
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = math.ceil(math.log(1e4 / _LOW) / _LOG_GROWTH) + 1  # up to 10,000 s (the last one is open)


class Histogram:
    """A count of values (seconds) in fixed buckets; percentiles within 1 %."""

    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * _BUCKETS))
        self.n = 0

    def add(self, seconds: float) -> None:
        i = int(math.log(seconds / _LOW) / _LOG_GROWTH) if seconds > _LOW else 0
        self.counts[i if i < _BUCKETS else _BUCKETS - 1] += 1
        self.n += 1

    def extend(self, other: Histogram) -> None:
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.n += other.n

    def percentile(self, q: float) -> float:
        """The q-quantile (nearest rank), as the middle of its bucket; NaN when empty."""
        if not self.n:
            return math.nan
        rank = min(self.n, max(1, math.ceil(q * self.n)))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return _LOW * _GROWTH ** (i + 0.5) if i else _LOW
        raise AssertionError("unreachable: the counts add up to n")

    def max(self) -> float:
        return self.percentile(1.0)

    def __getstate__(self) -> tuple[bytes, int]:
        return self.counts.tobytes(), self.n

    def __setstate__(self, state: tuple[bytes, int]) -> None:
        self.counts = array("q")
        self.counts.frombytes(state[0])
        self.n = state[1]


@dataclass
class KindStats:
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    latencies: dict[Outcome, Histogram] = field(default_factory=dict)  # seconds, by outcome

    @property
    def count(self) -> int:
        return sum(self.outcomes.values())

    def answered_ok(self) -> int:
        return sum(n for o, n in self.outcomes.items() if isinstance(o, int) and (o < 400))

    def percentile(self, q: float, outcome: Outcome | None = None) -> float:
        """The q-quantile of the latencies (of one outcome, or all: timeouts count at the timeout);
        NaN if there are none."""
        if outcome is not None:
            hist = self.latencies.get(outcome)
            return hist.percentile(q) if hist is not None else math.nan
        total = Histogram()
        for hist in self.latencies.values():
            total.extend(hist)
        return total.percentile(q)

    def extend(self, other: KindStats) -> None:
        self.outcomes.update(other.outcomes)
        for outcome, hist in other.latencies.items():
            mine = self.latencies.get(outcome)
            if mine is None:
                mine = self.latencies[outcome] = Histogram()
            mine.extend(hist)


@dataclass
class Recorder:
    kinds: dict[str, KindStats] = field(default_factory=dict)
    events_acked: int = 0
    # How late the simulator's own timers fired (its schedule): large when the simulator, not the
    # server, is the bottleneck.
    lag: Histogram = field(default_factory=Histogram)
    retry_after_seen: int = 0  # 429/503 answers that carried Retry-After
    connections: int = 0  # new connections opened (the other requests reused one)
    slow_connects: int = 0  # of them, handshakes of a second or more: a SYN dropped and sent again
    handshakes: Histogram = field(default_factory=Histogram)  # seconds until a new one could send
    reused: Histogram = field(default_factory=Histogram)  # latency of requests on a kept connection
    # The first SLOW_KEPT requests slower than SLOW seconds: (wall clock, kind, seconds), to match
    # with what the server logged at that time (its stall lines carry the time).
    slow: list[tuple[float, str, float]] = field(default_factory=list)

    def add(self, kind: str, outcome: Outcome, seconds: float) -> None:
        stats = self.kinds.get(kind)
        if stats is None:
            stats = self.kinds[kind] = KindStats()
        stats.outcomes[outcome] += 1
        hist = stats.latencies.get(outcome)
        if hist is None:
            hist = stats.latencies[outcome] = Histogram()
        hist.add(seconds)

    def note_slow(self, kind: str, seconds: float) -> None:
        if seconds > SLOW and len(self.slow) < SLOW_KEPT:
            self.slow.append((time.time(), kind, seconds))

    def late(self, seconds: float) -> None:
        self.lag.add(max(0.0, seconds))

    @property
    def late_max(self) -> float:
        return self.lag.max() if self.lag.n else 0.0

    def all(self) -> KindStats:
        total = KindStats()
        for stats in self.kinds.values():
            total.extend(stats)
        return total

    def count(self, outcome: Outcome) -> int:
        return sum(stats.outcomes.get(outcome, 0) for stats in self.kinds.values())

    @classmethod
    def merged(cls, recorders: Iterable[Recorder]) -> Recorder:
        out = cls()
        for rec in recorders:
            for kind, stats in rec.kinds.items():
                out.kinds.setdefault(kind, KindStats()).extend(stats)
            out.events_acked += rec.events_acked
            out.lag.extend(rec.lag)
            out.retry_after_seen += rec.retry_after_seen
            out.connections += rec.connections
            out.slow_connects += rec.slow_connects
            out.handshakes.extend(rec.handshakes)
            out.reused.extend(rec.reused)
            out.slow = sorted([*out.slow, *rec.slow])[:SLOW_KEPT]
        return out


def outcome_text(outcomes: Counter[Outcome]) -> str:
    """`200:1234 304:9000 429:3 timeout:0`-style, codes first."""
    codes = sorted(o for o in outcomes if isinstance(o, int))
    words = sorted(o for o in outcomes if isinstance(o, str))
    return " ".join(f"{o}:{outcomes[o]}" for o in [*codes, *words])


__all__ = ["ERROR", "TIMEOUT", "Histogram", "KindStats", "Outcome", "Recorder", "outcome_text"]
