"""Group commit for enrollments: the ones that arrive together are written in ONE transaction.

A fleet coming up enrolls hundreds of machines a second. One transaction each costs a commit (a
WAL flush), a pooled connection and a worker thread per enrollment; here each request queues its
enrollment and waits, without holding a thread, for its outcome. One writer thread per process
takes everything queued (at most `max_batch`) and hands it to `HostRepo.enroll_many`, which
decides each in arrival order exactly as a lone enrollment is decided and writes them all at once,
with the change feed rows of rotated keys (server_stub/store/hosts.py). While a batch is
written the next one gathers, so under load batches grow by themselves and a lone enrollment
waits for nothing. The outcomes go back to the event loop in one wake-up per batch (not a
thread-safe future and a wake-up per request: those cost a fifth of an enrollment's CPU).

A batch that fails fails every request in it with the same error (StoreError: 503, Retry-After)
and stores none of them. The queue is bounded: past `max_queue` waiting, EnrollmentsBusy (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from server_stub.store.hosts import Enrollment, EnrollRefused

MAX_BATCH = 500
MAX_QUEUE = 4096

Outcome = str | EnrollRefused
WriteBatch = Callable[[Sequence[Enrollment], datetime], list[Outcome]]


class EnrollmentsBusy(Exception):
    """The queue is full (or the writer stopped): the request is refused, nothing is stored."""


class EnrollBatcher:
    def __init__(
        self,
        write: WriteBatch,
        clock: Callable[[], datetime],
        *,
        max_batch: int = MAX_BATCH,
        max_queue: int = MAX_QUEUE,
        autostart: bool = True,
    ) -> None:
        self._write = write
        self._clock = clock
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._autostart = autostart
        self._queue: deque[_Waiting] = deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    async def enroll(self, item: Enrollment) -> str:
        """The host id (HostRepo.enroll's answer); raises EnrollRefused, StoreError, EnrollmentsBusy.

        Queued now (EnrollmentsBusy at once when it cannot be); a request cancelled before its
        batch is taken (its client left) is not written.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        with self._wakeup:
            if self._stopping:
                raise EnrollmentsBusy("the server is stopping")
            if len(self._queue) >= self._max_queue:
                raise EnrollmentsBusy(f"{len(self._queue)} enrollments already waiting")
            self._queue.append(_Waiting(item, future, loop))
            if self._thread is None and self._autostart:
                self._start_locked()
            self._wakeup.notify()
        outcome = await future
        if isinstance(outcome, EnrollRefused):
            raise outcome
        return outcome

    def start(self) -> None:
        with self._wakeup:
            if self._thread is None and not self._stopping:
                self._start_locked()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the writer; later enrollments are refused."""
        with self._wakeup:
            self._stopping = True
            thread = self._thread
            self._wakeup.notify()
        if thread is not None:
            thread.join(timeout)
        with self._wakeup:  # never started (or stuck): nobody will write these
            left = [] if thread is not None and thread.is_alive() else list(self._queue)
            self._queue.clear()
        _answer(left, error=EnrollmentsBusy("the server is stopping"))

    def _start_locked(self) -> None:
        self._thread = threading.Thread(target=self._run, name="enroll-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if not self._queue:
                    return
                taken = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            # A request whose client left before its batch was taken is dropped here.
            batch = [waiting for waiting in taken if not waiting.future.cancelled()]
            if batch:
                self._write_batch(batch)

    def _write_batch(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = self._write([waiting.item for waiting in batch], self._clock())
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} enrollments")
        except Exception as exc:  # each request answers what a lone enrollment would have
            _answer(batch, error=exc)
            return
        _answer(batch, outcomes)


@dataclass(frozen=True, slots=True)
class _Waiting:
    item: Enrollment
    future: asyncio.Future[Outcome]
    loop: asyncio.AbstractEventLoop


def _answer(
    batch: list[_Waiting], outcomes: list[Outcome] | None = None, error: Exception | None = None
) -> None:
    """Give each request its outcome (or the batch's error): one wake-up of each event loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outcome], Outcome | None]]] = {}
    for n, waiting in enumerate(batch):
        by_loop.setdefault(waiting.loop, []).append((waiting.future, outcomes[n] if outcomes else None))
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, answers, error)


def _settle(answers: list[tuple[asyncio.Future[Outcome], Outcome | None]], error: Exception | None) -> None:
    for future, outcome in answers:
        if future.done():  # cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            assert outcome is not None
            future.set_result(outcome)
