"""Group commit for enrollments: the ones that arrive together are written in ONE transaction.

A fleet coming up enrolls hundreds of machines a second. Each request queues its enrollment
(server_stub/groupcommit.py) and the writer hands the group to `HostRepo.enroll_many`, which
decides each in arrival order exactly as a lone enrollment is decided and writes them all at once,
with the change feed rows of rotated keys (server_stub/store/hosts.py).

A batch that fails fails every request in it with the same error (StoreError: 503, Retry-After)
and stores none of them. The queue is bounded: past `max_queue` waiting, EnrollmentsBusy (503).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from server_stub.groupcommit import GroupCommit
from server_stub.store.hosts import Enrollment, EnrollRefused

MAX_BATCH = 500
MAX_QUEUE = 4096

Outcome = str | EnrollRefused
WriteBatch = Callable[[Sequence[Enrollment], datetime], list[Outcome]]


class EnrollmentsBusy(Exception):
    """The queue is full (or the writer stopped): the request is refused, nothing is stored."""


class EnrollBatcher(GroupCommit[Enrollment, str]):
    def __init__(
        self,
        write: WriteBatch,
        clock: Callable[[], datetime],
        *,
        max_batch: int = MAX_BATCH,
        max_queue: int = MAX_QUEUE,
        autostart: bool = True,
    ) -> None:
        super().__init__(
            write,
            clock,
            max_batch=max_batch,
            max_queue=max_queue,
            name="enroll-writer",
            busy=EnrollmentsBusy,
            autostart=autostart,
        )

    async def enroll(self, item: Enrollment) -> str:
        """The host id (HostRepo.enroll's answer); raises EnrollRefused, StoreError, EnrollmentsBusy."""
        return await self.submit(item)
