"""Event-driven reaction: a process is judged right after its exec, not at the next scan.

`ExecWatcher` runs one thread that reads the kernel's process events (collect.proc_events):

* exec -> first a triage (endpoint_agent.exec_triage): the binary is identified in three small
  reads and the policy's answer for it is cached, so a process no rule can match (nearly every
  exec of a build) costs no more, and one already gone costs nothing further. The others are
  checked at once (a snapshot of just that process, through the agent's own pipeline:
  evaluate, decide, enforce, record -- the same safety rails, dedup and store as a scan), and,
  if a network or P2P rule could match them, again after each of `rechecks` (0.25 s and 1 s by
  default), when its first connections exist; a process only such rules could match is passed
  to the pipeline only once it holds a socket. A re-check is skipped once the process has exited.
* a process renaming itself is triaged again, like an exec. Re-checks fall
  on a grid of `recheck_slot` (50 ms): the re-checks of execs that arrived within one slot
  run together, one pipeline run for a whole burst (a build starts hundreds a second).
* exit -> what the collector caches about the process is dropped at once.
* overrun (the kernel dropped events) -> a full scan now: whatever was missed is in it.
  Full scans asked for this way are at least `min_rescan_seconds` apart.
* the event source failing at run time -> the watcher falls back to polling (a full scan
  every `poll_seconds`) and tries to reopen the source every `reopen_seconds`.

Events are read in batches: sparse ones as they come, but once a read brings several, the next
comes `batch_seconds` later, so a storm of execs costs a wake-up per batch, not per event. Execs
that arrive together are triaged and checked together (one snapshot for the batch). The queue of
pending checks is bounded (`max_pending`); past it, the checks are dropped for one full scan.
Every callback failure is logged with its traceback and the loop goes on.

    watcher = open_reaction(settings, agent, rescan=service.scan)   # None: polling only
    ...
    watcher.stop()
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from endpoint_agent.collect.exec_identity import holds_socket
from endpoint_agent.collect.proc_events import (
    CommEvent,
    Event,
    ExecEvent,
    ExitEvent,
    Overrun,
    open_event_source,
)
from endpoint_agent.errors import AgentError
from endpoint_agent.exec_triage import Verdict

logger = logging.getLogger(__name__)

DEFAULT_RECHECKS: tuple[float, ...] = (0.25, 1.0)
DEFAULT_MAX_PENDING = 4096
DEFAULT_RECHECK_SLOT = 0.05
DEFAULT_BATCH_SECONDS = 0.025  # events are read at most this often while they keep coming
_BURST = 4  # events in one read that make it a storm (sparse events are read as they come)


class EventSource(Protocol):
    """What the watcher needs of collect.proc_events.ProcEventSource (a test may pass its own)."""

    @property
    def closed(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> list[Event]: ...

    def close(self) -> None: ...


SourceOpener = Callable[[], "EventSource | None"]
Triage = Callable[[Sequence[int]], Mapping[int, Verdict]]


@dataclass
class WatchStats:
    execs: int = 0
    renames: int = 0
    exits: int = 0
    overruns: int = 0
    checks: int = 0  # fast-path runs (each covers a batch of processes)
    processes_checked: int = 0
    probes: int = 0  # socket probes of processes only network/P2P rules could match
    rescans: int = 0
    dropped_checks: int = 0  # pending checks dropped for a full scan (queue over its bound)
    failures: int = 0  # callbacks that raised
    source_failures: int = 0
    cpu_seconds: float = 0.0  # the watcher thread's own CPU time: what process starts cost the agent

    def to_json(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(self.__dict__)
        out["cpu_seconds"] = round(self.cpu_seconds, 3)
        return out


@dataclass(order=True)
class _Check:
    due: float
    seq: int
    pid: int = field(compare=False)
    generation: int = field(compare=False)
    last: bool = field(compare=False)  # the final re-check of this exec
    probe: bool = field(compare=False, default=False)  # checked only if it holds a socket by then


class ExecWatcher:
    def __init__(
        self,
        source: EventSource,
        *,
        react: Callable[[Sequence[int]], object],
        rescan: Callable[[], object],
        forget: Callable[[int], object] = lambda pid: None,
        triage: Triage | None = None,
        probe: Callable[[int], bool] = holds_socket,
        changed: Callable[[int], object] = lambda pid: None,
        lost: Callable[[], object] = lambda: None,
        reopen: SourceOpener | None = None,
        rechecks: Sequence[float] = DEFAULT_RECHECKS,
        max_pending: int = DEFAULT_MAX_PENDING,
        recheck_slot: float = DEFAULT_RECHECK_SLOT,
        min_rescan_seconds: float = 1.0,
        poll_seconds: float = 5.0,
        reopen_seconds: float = 60.0,
        batch_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if any(d <= 0 for d in rechecks) or max_pending < 1 or recheck_slot < 0 or batch_seconds < 0:
            raise ValueError("rechecks must be > 0, max_pending >= 1, recheck_slot and batch_seconds >= 0")
        self._source: EventSource | None = source
        self._react = react
        self._rescan = rescan
        self._forget = forget
        self._triage = triage
        self._probe = probe
        self._changed = changed  # a process exec'd or renamed itself: what is cached about it is stale
        self._lost = lost  # events were lost: whatever they kept current must be read again
        self._reopen = reopen
        self._rechecks = tuple(sorted(rechecks))
        self._max_pending = max_pending
        self._slot = recheck_slot
        self._min_rescan = min_rescan_seconds
        self._poll = poll_seconds
        self._reopen_every = reopen_seconds
        self._batch = batch_seconds
        self._last_events = -float("inf")
        self._clock = clock
        self._queue: list[_Check] = []
        self._generation: dict[int, int] = {}  # pid -> its current exec; older checks are stale
        self._seq = itertools.count()
        self._rescan_wanted = False
        self._last_rescan = -float("inf")
        self._last_reopen = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # start/stop and the source swap
        self.stats = WatchStats()
        self.tracking: Callable[[], object] | None = None

    # -- life cycle --------------------------------------------------------------------------

    @property
    def events_live(self) -> bool:
        """True while exec events drive the reaction (False: polling after the source failed)."""
        source = self._source
        return source is not None and not source.closed

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            if self.alive or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self.run, name="exec-watcher", daemon=True)
            self._thread.start()

    def ensure_running(self) -> None:
        """The daemon's watchdog: restart the thread if it ever died (it should not)."""
        if not self.alive and not self._stop.is_set():
            logger.error("exec watcher thread was not running; restarting it")
            self.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the event source (wakes the thread) and wait for the thread to finish."""
        self._stop.set()
        with self._lock:
            source, thread = self._source, self._thread
        if source is not None:
            source.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.error("exec watcher did not stop within %.0fs", timeout)

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mode": "events" if self.events_live else "polling",
            "pending_checks": len(self._queue),
            **self.stats.to_json(),
        }
        stats = getattr(self._triage, "stats", None)
        if stats is not None:
            out["triage"] = stats.to_json()  # what the per-binary answers spared
        if self.tracking is not None:
            out["tracking"] = self.tracking()  # what scans trusting the events skipped or repaired
        return out

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        logger.info("reacting to process starts (exec events); re-checks after %s s", self._rechecks)
        while not self._stop.is_set():
            cpu = time.thread_time()
            try:
                self.step()
            except Exception:  # the loop must survive anything; step() already guards callbacks
                logger.exception("exec watcher step failed; going on")
                self._stop.wait(1.0)
            self.stats.cpu_seconds += time.thread_time() - cpu

    def step(self, max_wait: float | None = None) -> None:
        """One round: wait for events (or the next due check), handle them, run what is due."""
        source = self._source
        if source is None or source.closed:
            self._degraded(max_wait)
            return
        self._pace(max_wait)
        timeout = self._next_timeout(max_wait)
        try:
            events = source.wait(timeout)
        except AgentError as exc:
            self._source_failed(source, exc)
            return
        if len(events) >= _BURST:  # a storm: read the next batch only after `batch_seconds`
            self._last_events = self._clock()
        self.handle(events)
        self.run_due()

    def handle(self, events: Iterable[Event]) -> None:
        now = self._clock()
        started: list[int] = []
        for event in events:
            if isinstance(event, ExecEvent):
                self.stats.execs += 1
                self._generation[event.tgid] = self._generation.get(event.tgid, 0) + 1
                started.append(event.tgid)
                self._call(functools.partial(self._changed, event.tgid), f"exec of pid {event.tgid}")
            elif isinstance(event, ExitEvent):
                if not event.is_thread:
                    self._exited(event.pid)
            elif isinstance(event, CommEvent):
                if not event.is_thread:  # a process renamed itself: judged again under its new name
                    self.stats.renames += 1
                    self._generation[event.pid] = self._generation.get(event.pid, 0) + 1
                    started.append(event.pid)
                    self._call(functools.partial(self._changed, event.pid), f"rename of pid {event.pid}")
            elif isinstance(event, Overrun):
                self.stats.overruns += 1
                logger.warning("process events were lost (receive buffer overrun); scanning everything")
                self._rescan_wanted = True
                self._call(self._lost, "marking events lost")
        # One look per process of the batch, after its exits: one that is already gone needs none.
        pids = [pid for pid in dict.fromkeys(started) if pid in self._generation]
        if pids:
            self._schedule_all(pids, now)
        if len(self._queue) > self._max_pending:
            self.stats.dropped_checks += len(self._queue)
            logger.warning("%d pending process checks dropped for a full scan", len(self._queue))
            self._queue.clear()
            self._generation.clear()
            self._rescan_wanted = True
            self._call(self._lost, "marking checks dropped")

    def run_due(self) -> None:
        now = self._clock()
        if self._rescan_wanted and now - self._last_rescan >= self._min_rescan:
            self._rescan_wanted = False
            self._last_rescan = now
            self.stats.rescans += 1
            self._call(self._rescan, "full scan")
        pids: list[int] = []
        while self._queue and self._queue[0].due <= now:
            check = heapq.heappop(self._queue)
            if self._generation.get(check.pid) != check.generation:
                continue  # exited, or exec'd again (that exec has its own checks)
            if check.last:
                del self._generation[check.pid]
            if check.pid in pids:
                continue
            if check.probe:
                self.stats.probes += 1
                if not self._held_socket(check.pid):
                    continue  # only a connection could make it match, and it has none yet
            pids.append(check.pid)
        if pids:
            self.stats.checks += 1
            self.stats.processes_checked += len(pids)
            self._call(lambda: self._react(pids), f"check of {len(pids)} new process(es)")

    # -- internals ---------------------------------------------------------------------------

    def _schedule_all(self, pids: Sequence[int], now: float) -> None:
        verdicts: Mapping[int, Verdict] = {}
        if self._triage is not None:
            try:
                verdicts = self._triage(pids)
            except Exception:  # a triage bug must not cost detection: check them all
                self.stats.failures += 1
                logger.exception("exec watcher: triage of %d process(es) failed; checking them", len(pids))
        for pid in pids:
            verdict = verdicts.get(pid, Verdict.WATCH)
            if verdict in (Verdict.GONE, Verdict.SKIP):
                del self._generation[pid]
            else:
                self._schedule(pid, now, verdict)

    def _schedule(self, pid: int, now: float, verdict: Verdict) -> None:
        generation = self._generation[pid]
        # The first check at once (the reaction time); the re-checks on the slot grid (batched).
        dues = [now]
        if verdict is not Verdict.CHECK:
            dues.extend(self._slotted(now + delay) for delay in self._rechecks)
        probe = verdict is Verdict.PROBE
        for i, due in enumerate(dues):
            check = _Check(due, next(self._seq), pid, generation, i == len(dues) - 1, probe)
            heapq.heappush(self._queue, check)

    def _held_socket(self, pid: int) -> bool:
        try:
            return self._probe(pid)
        except Exception:
            self.stats.failures += 1
            logger.exception("exec watcher: socket probe of pid %d failed; checking it", pid)
            return True

    def _pace(self, max_wait: float | None) -> None:
        """While events pour in, read them at most every `batch_seconds`: a storm is read in batches."""
        if self._batch <= 0:
            return
        wait = self._last_events + self._batch - self._clock()
        if self._queue:
            wait = min(wait, self._queue[0].due - self._clock())
        if max_wait is not None:
            wait = min(wait, max_wait)
        if wait > 0 and not self._stop.is_set():
            time.sleep(wait)  # a plain sleep (short; stop() waits for it): lighter than a timed lock wait

    def _slotted(self, due: float) -> float:
        """`due` rounded up to the next slot boundary (the tolerance keeps 100.25 on 100.25)."""
        if self._slot <= 0:
            return due
        return math.ceil(due / self._slot - 1e-6) * self._slot

    def _exited(self, pid: int) -> None:
        self.stats.exits += 1
        self._generation.pop(pid, None)  # its pending checks become stale
        self._call(lambda: self._forget(pid), f"forgetting pid {pid}")

    def _next_timeout(self, max_wait: float | None) -> float | None:
        waits = [w for w in (max_wait,) if w is not None]
        if self._queue:
            waits.append(self._queue[0].due - self._clock())
        if self._rescan_wanted:
            waits.append(self._last_rescan + self._min_rescan - self._clock())
        return max(0.0, min(waits)) if waits else None

    def _call(self, func: Callable[[], object], what: str) -> None:
        try:
            func()
        except Exception:
            self.stats.failures += 1
            logger.exception("exec watcher: %s failed; going on", what)

    def _source_failed(self, source: EventSource, exc: Exception) -> None:
        self.stats.source_failures += 1
        logger.error("process events failed (%s); falling back to a full scan every %gs", exc, self._poll)
        source.close()
        self._queue.clear()
        self._generation.clear()
        self._call(self._lost, "marking the source failed")

    def _degraded(self, max_wait: float | None) -> None:
        """No event source: poll with full scans, and try to get the source back now and then."""
        now = self._clock()
        if self._reopen is not None and now - self._last_reopen >= self._reopen_every:
            self._last_reopen = now
            source = self._reopen()
            if source is not None:
                with self._lock:
                    if self._stop.is_set():
                        source.close()
                        return
                    self._source = source
                logger.info("process events are back")
                self._rescan_wanted = True  # whatever started meanwhile
                self._call(self._lost, "marking events resumed")
                self.run_due()
                return
        if now - self._last_rescan >= self._poll:
            self._rescan_wanted = True
            self.run_due()
        wait = self._last_rescan + self._poll - self._clock()
        self._stop.wait(max(0.0, min(wait, max_wait) if max_wait is not None else wait))


def open_reaction(
    *,
    react: Callable[[Sequence[int]], object],
    rescan: Callable[[], object],
    forget: Callable[[int], object],
    triage: Triage | None = None,
    lost: Callable[[], object] | None = None,
    opener: SourceOpener | None = None,
    start: bool = True,
) -> ExecWatcher | None:
    """A running watcher, or None (logged by the opener) where process events are unavailable."""
    # Forks and threads are dropped by the kernel: nothing is done for them, and each wake-up costs.
    opener = opener or functools.partial(open_event_source, essential=True)
    source = opener()
    if source is None:
        return None
    watcher = ExecWatcher(
        source,
        react=react,
        rescan=rescan,
        forget=forget,
        triage=triage,
        changed=forget,  # what the collector cached before the exec or rename is read again
        lost=lost or (lambda: None),
        reopen=opener,
        batch_seconds=DEFAULT_BATCH_SECONDS,
    )
    if start:
        watcher.start()
    return watcher


__all__ = [
    "DEFAULT_BATCH_SECONDS",
    "DEFAULT_RECHECKS",
    "DEFAULT_RECHECK_SLOT",
    "EventSource",
    "ExecWatcher",
    "Triage",
    "WatchStats",
    "open_reaction",
]
