"""Group commit: requests that arrive together are written by one writer thread in ONE transaction.

One transaction per request costs a commit (a WAL flush), a pooled connection, a worker thread
and its round trips; here each request queues its item and waits, without holding a thread, for
its outcome. One writer thread per process takes everything queued (at most `max_batch`, in
arrival order) and hands it to `write`, which returns one outcome per item (an Exception outcome
is raised to that request alone). While a group is written the next one gathers, so under load
groups grow by themselves and a lone request waits for nothing. The outcomes go back to the event
loop in one wake-up per group (not a thread-safe future and a wake-up per request).
With `writers` > 1, that many threads each take the next group: groups are then written at once
(and may commit in any order), so only for writes whose outcome does not depend on that order.

A group whose `write` raises fails every request in it with that error. The queue is bounded:
past `max_queue` waiting, `busy` is raised at once (the caller answers 503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from server_stub.periodic import name_os_thread

Item = TypeVar("Item")
Out = TypeVar("Out")


class GroupBusy(Exception):
    """The queue is full (or the writer stopped): the request is refused, nothing is stored."""


class GroupCommit(Generic[Item, Out]):
    def __init__(
        self,
        write: Callable[[Sequence[Item], datetime], Sequence[Out | Exception]],
        clock: Callable[[], datetime],
        *,
        max_batch: int,
        max_queue: int,
        name: str,
        busy: type[Exception] = GroupBusy,
        autostart: bool = True,
        writers: int = 1,
    ) -> None:
        self._write = write
        self._clock = clock
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._name = name
        self._busy = busy
        self._autostart = autostart
        self._writers = writers
        self._queue: deque[_Waiting[Item, Out]] = deque()
        self._wakeup = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    async def submit(self, item: Item) -> Out:
        """`item`'s outcome; raises its Exception outcome, the group's error, or `busy`.

        Queued now (`busy` at once when it cannot be); a request cancelled before its group is
        taken (its client left) is not written.
        """
        return _raised(await self.submit_soon(item))

    def submit_soon(self, item: Item) -> asyncio.Future[Out | Exception]:
        """`submit` for a caller that cannot await (an HTTP protocol's callback): the future of
        `item`'s outcome (an Exception outcome is its result; the group's error its exception).
        Cancelling it before its group is taken leaves `item` unwritten. Raises `busy` at once."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out | Exception] = loop.create_future()
        self._queued(_Waiting(item, future, loop))
        return future

    def submit_wait(self, item: Item) -> Out:
        """`submit` from a worker thread, which waits (one hop back to the event loop fewer)."""
        future: concurrent.futures.Future[Out | Exception] = concurrent.futures.Future()
        self._queued(_Waiting(item, future, None))
        return _raised(future.result())

    def _queued(self, waiting: _Waiting[Item, Out]) -> None:
        with self._wakeup:
            if self._stopping:
                raise self._busy("the server is stopping")
            if len(self._queue) >= self._max_queue:
                raise self._busy(f"{len(self._queue)} requests already waiting")
            self._queue.append(waiting)
            if not self._threads and self._autostart:
                self._start_locked()
            self._wakeup.notify()

    def start(self) -> None:
        with self._wakeup:
            if not self._threads and not self._stopping:
                self._start_locked()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the writer; later requests are refused."""
        with self._wakeup:
            self._stopping = True
            threads = list(self._threads)
            self._wakeup.notify_all()
        for thread in threads:
            thread.join(timeout)
        with self._wakeup:  # never started (or stuck): nobody will write these
            left = [] if any(t.is_alive() for t in threads) else list(self._queue)
            self._queue.clear()
        _answer(left, error=self._busy("the server is stopping"))

    def _start_locked(self) -> None:
        for _ in range(self._writers):
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self) -> None:
        name_os_thread()  # per-thread CPU names it (server_stub/periodic.py)
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if not self._queue:
                    return
                taken = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            # A request whose client left before its group was taken is dropped here.
            group = [waiting for waiting in taken if not waiting.future.cancelled()]
            if group:
                self._write_group(group)

    def _write_group(self, group: list[_Waiting[Item, Out]]) -> None:
        try:
            outcomes = self._write([waiting.item for waiting in group], self._clock())
            if len(outcomes) != len(group):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(group)} requests")
        except Exception as exc:  # each request answers what a lone request would have
            _answer(group, error=exc)
            return
        _answer(group, outcomes)


def _raised(outcome: Out | Exception) -> Out:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@dataclass(frozen=True, slots=True)
class _Waiting(Generic[Item, Out]):
    item: Item
    future: asyncio.Future[Out | Exception] | concurrent.futures.Future[Out | Exception]
    loop: asyncio.AbstractEventLoop | None  # None: a thread waits on `future`


def _answer(
    group: Sequence[_Waiting[Item, Out]],
    outcomes: Sequence[Out | Exception] | None = None,
    error: Exception | None = None,
) -> None:
    """Give each request its outcome (or the group's error): one wake-up of each event loop per group."""
    by_loop: dict[asyncio.AbstractEventLoop | None, list[tuple[Any, object]]] = {}
    for n, waiting in enumerate(group):
        by_loop.setdefault(waiting.loop, []).append((waiting.future, outcomes[n] if outcomes else None))
    for loop, answers in by_loop.items():
        if loop is None:  # threads wait: a concurrent future is set from any thread
            _settle(answers, error)
            continue
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, answers, error)


def _settle(answers: list[tuple[Any, object]], error: Exception | None) -> None:
    for future, outcome in answers:
        if future.done():  # cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)
