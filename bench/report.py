"""What a benchmark prints: a table of timings and targets with PASS/FAIL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bench.timing import Timing, fmt_seconds


@dataclass(frozen=True)
class Target:
    """A ratio (or any number) that must stay at or below `limit`."""

    name: str
    value: float
    limit: float

    @property
    def passed(self) -> bool:
        return self.value <= self.limit

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"  {self.name:<44} {self.value:8.3f}  <= {self.limit:<6g} {verdict}"


def timing_table(timings: Iterable[Timing]) -> str:
    rows = [f"  {'':<44} {'median':>10} {'min':>10} {'max':>10} {'runs':>5}"]
    for t in timings:
        rows.append(
            f"  {t.label:<44} {fmt_seconds(t.median):>10} {fmt_seconds(t.minimum):>10}"
            f" {fmt_seconds(t.maximum):>10} {len(t.samples):>5}"
        )
    return "\n".join(rows)


def targets_block(targets: Iterable[Target]) -> str:
    return "\n".join(target.line() for target in targets)
