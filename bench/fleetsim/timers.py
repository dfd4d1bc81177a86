"""Many timers on one loop timer: the simulator schedules two per host, 400,000 for a 200,000-host
fleet, and an event-loop timer each costs ~30 us to arm (a heap entry here: ~1 us).

    wheel = Wheel(loop, recorder)            # ticks every 10 ms once started
    wheel.after(5.0, job, host)              # planned before the start: 5 s after it
    wheel.start()
    wheel.at(loop.time() + 60.0, job, host)  # job(host) runs at the first tick at or after then
    wheel.stop()                             # forgets every job

Jobs may be planned before the start (a fleet's first polls, prepared before the clock runs):
their times count from the start.

Each tick records in `recorder.late` how late it ran: a loop that falls behind (the simulator
short of CPU) shows there, and its latencies then measure the simulator, not the server.
A job runs up to one tick (10 ms) after its time, far inside the agent's own +-20 % jitter.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

from bench.fleetsim.stats import Recorder


class Wheel:
    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Recorder, every: float = 0.01) -> None:
        self.loop = loop
        self.recorder = recorder
        self.every = every
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.origin = 0.0  # loop time of the start; the heap holds times since then

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, due: float, job: Callable[..., Any], *args: Any) -> None:
        """Run `job(*args)` at loop time `due` (a tick after it at the latest); once started."""
        heapq.heappush(self._heap, (due - self.origin, next(self._order), job, args))

    def after(self, offset: float, job: Callable[..., Any], *args: Any) -> None:
        """Run `job(*args)` `offset` seconds after the start (before or after it)."""
        heapq.heappush(self._heap, (offset, next(self._order), job, args))

    def start(self) -> None:
        if self._timer is None:
            self.origin = self.loop.time()
            self._arm(self.origin + self.every)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()

    def _arm(self, due: float) -> None:
        self._timer = self.loop.call_at(due, self._tick, due)

    def _tick(self, due: float) -> None:
        now = self.loop.time()
        self.recorder.late(now - due)
        heap, since = self._heap, now - self.origin
        while heap and heap[0][0] <= since:
            _due, _n, job, args = heapq.heappop(heap)
            job(*args)
        # Next tick on the grid, or now if this one ran long: lateness is measured from the grid.
        self._arm(max(due + self.every, now))


__all__ = ["Wheel"]
