"""What a part of the service hands the composition root: its jobs, its status, its shutdown.

    Part("report", jobs=[JobSpec("report", job.tick, 1.0, at_shutdown=job.flush)], status=job.status)

A part never reaches into another: it is given the references it needs when it is built, and
it listens to the root's signals (`Signal.connect`) for what happens elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """A scheduled job: run every `interval_seconds` on the scheduler's thread pool."""

    name: str
    func: Callable[[], None]
    interval_seconds: float
    run_at_start: bool = True
    # Runs once after the scheduler stopped (e.g. a final upload); failures are logged, not raised.
    at_shutdown: Callable[[], None] | None = None


@dataclass(frozen=True)
class Part:
    """One registered part: `status()` is shown under `status_key` (default: `name`) in status.json."""

    name: str
    jobs: Sequence[JobSpec] = ()
    status: Callable[[], Mapping[str, object]] | None = None
    status_key: str | None = None
    status_at_top: bool = False  # the status's keys go to the top level of status.json instead
    # Runs last, after every job's `at_shutdown`, in reverse order of registration; must be idempotent.
    close: Callable[[], None] | None = None


def guarded(name: str, func: Callable[[], None]) -> Callable[[], None]:
    """A job that never dies of one bad run (the scheduler would log it less usefully)."""

    def run() -> None:
        try:
            func()
        except Exception:
            logger.exception("job %s failed; the next run goes ahead", name)

    return run


@dataclass
class Signal:
    """Something that happened, told to every listener in order; one failing listener stops no other."""

    name: str
    _listeners: list[Callable[[], object]] = field(default_factory=list)

    def connect(self, listener: Callable[[], object]) -> None:
        self._listeners.append(listener)

    def emit(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                logger.exception("a listener of %s failed", self.name)


__all__ = ["JobSpec", "Part", "Signal", "guarded"]
