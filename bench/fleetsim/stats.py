"""What the simulated fleet saw, per request kind: outcomes, latencies, events acknowledged.

    rec = Recorder()
    rec.add("policy", 304, 0.004)            # status code, seconds
    rec.add("events", TIMEOUT, 15.0)
    merged = Recorder.merged([rec, other])   # from several simulator processes
    merged.kinds["policy"].percentile(0.95)

Recorders are plain data (picklable) so simulator processes send theirs to the driver.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

TIMEOUT = "timeout"  # no complete answer within the agent's timeout
ERROR = "error"  # refused, reset or closed connection
Outcome = int | str


@dataclass
class KindStats:
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    latencies: dict[Outcome, array[float]] = field(default_factory=dict)  # seconds, by outcome

    @property
    def count(self) -> int:
        return sum(self.outcomes.values())

    def answered_ok(self) -> int:
        return sum(n for o, n in self.outcomes.items() if isinstance(o, int) and (o < 400))

    def percentile(self, q: float, outcome: Outcome | None = None) -> float:
        """The q-quantile of the latencies (of one outcome, or all: timeouts count at the timeout),
        nearest rank; NaN if there are none."""
        if outcome is None:
            ordered = sorted(x for values in self.latencies.values() for x in values)
        else:
            ordered = sorted(self.latencies.get(outcome, ()))
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def extend(self, other: KindStats) -> None:
        self.outcomes.update(other.outcomes)
        for outcome, values in other.latencies.items():
            self.latencies.setdefault(outcome, array("d")).extend(values)


@dataclass
class Recorder:
    kinds: dict[str, KindStats] = field(default_factory=dict)
    events_acked: int = 0
    late_max: float = 0.0  # how far behind schedule the simulator itself ran (s): it saturated if large
    retry_after_seen: int = 0  # 429/503 answers that carried Retry-After

    def add(self, kind: str, outcome: Outcome, seconds: float) -> None:
        stats = self.kinds.get(kind)
        if stats is None:
            stats = self.kinds[kind] = KindStats()
        stats.outcomes[outcome] += 1
        values = stats.latencies.get(outcome)
        if values is None:
            values = stats.latencies[outcome] = array("d")
        values.append(seconds)

    def late(self, seconds: float) -> None:
        self.late_max = max(self.late_max, seconds)

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
            out.late_max = max(out.late_max, rec.late_max)
            out.retry_after_seen += rec.retry_after_seen
        return out


def outcome_text(outcomes: Counter[Outcome]) -> str:
    """`200:1234 304:9000 429:3 timeout:0`-style, codes first."""
    codes = sorted(o for o in outcomes if isinstance(o, int))
    words = sorted(o for o in outcomes if isinstance(o, str))
    return " ".join(f"{o}:{outcomes[o]}" for o in [*codes, *words])


__all__ = ["ERROR", "TIMEOUT", "KindStats", "Outcome", "Recorder", "outcome_text"]
