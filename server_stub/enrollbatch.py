"""Group commit for enrollments: the ones that arrive together are written in ONE transaction.

A fleet coming up enrolls hundreds of machines a second. One transaction each costs a commit (a
WAL flush), a pooled connection and a worker thread per enrollment; here each request queues its
enrollment and waits, without holding a thread, for its outcome. One writer thread per process
takes everything queued (at most `max_batch`) and hands it to `HostRepo.enroll_many`, which
decides each in arrival order exactly as a lone enrollment is decided and writes them all at once,
with the change feed rows of rotated keys (server_stub/store/hosts.py). While a batch is
written the next one gathers, so under load batches grow by themselves and a lone enrollment
waits for nothing.

A batch that fails fails every request in it with the same error (StoreError: 503, Retry-After)
and stores none of them. The queue is bounded: past `max_queue` waiting, EnrollmentsBusy (503).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
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
        self._queue: deque[tuple[Enrollment, Future[Outcome]]] = deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    async def enroll(self, item: Enrollment) -> str:
        """The host id (HostRepo.enroll's answer); raises EnrollRefused, StoreError, EnrollmentsBusy."""
        outcome = await asyncio.wrap_future(self.submit(item))
        if isinstance(outcome, EnrollRefused):
            raise outcome
        return outcome

    def submit(self, item: Enrollment) -> Future[Outcome]:
        """Queue one enrollment; its future gets the outcome once its batch is written."""
        future: Future[Outcome] = Future()
        with self._wakeup:
            if self._stopping:
                raise EnrollmentsBusy("the server is stopping")
            if len(self._queue) >= self._max_queue:
                raise EnrollmentsBusy(f"{len(self._queue)} enrollments already waiting")
            self._queue.append((item, future))
            if self._thread is None and self._autostart:
                self._start_locked()
            self._wakeup.notify()
        return future

    def start(self) -> None:
        with self._wakeup:
            if self._thread is None and not self._stopping:
                self._start_locked()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the writer; later submissions are refused."""
        with self._wakeup:
            self._stopping = True
            thread = self._thread
            self._wakeup.notify()
        if thread is not None:
            thread.join(timeout)
        with self._wakeup:  # never started (or stuck): nobody will write these
            left = [] if thread is not None and thread.is_alive() else list(self._queue)
            if left:
                self._queue.clear()
        for _, future in left:
            if future.set_running_or_notify_cancel():
                future.set_exception(EnrollmentsBusy("the server is stopping"))

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
            # A request whose client left before its batch was written is dropped here.
            batch = [(item, future) for item, future in taken if future.set_running_or_notify_cancel()]
            if batch:
                self._write_batch(batch)

    def _write_batch(self, batch: list[tuple[Enrollment, Future[Outcome]]]) -> None:
        try:
            outcomes = self._write([item for item, _ in batch], self._clock())
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} enrollments")
        except Exception as exc:  # each request answers what a lone enrollment would have
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            future.set_result(outcome)
