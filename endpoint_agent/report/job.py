"""The service's report job: when due, upload the outbox, then post a heartbeat; back off on failures.

    job = ReportJob(uploader, sink, heartbeat=lambda: Heartbeat(...), schedule=ReportSchedule(60, ...))
    job.run()      # scheduled often (every second); does nothing until the schedule says it is due

One round = upload every pending event (report.uploader), then one heartbeat. The first failure ends
the round: the events stay queued and the schedule backs off with full jitter, honouring Retry-After.
A job that dies would stop reporting for good, so every failure the round can meet is caught here
and logged with what happens next; an unexpected one goes on to the daemon's guard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from endpoint_agent.clock import Clock
from endpoint_agent.errors import ServerError, ServerRejected, ServerUnavailable, StoreError
from endpoint_agent.report.backoff import ReportSchedule
from endpoint_agent.report.heartbeat import Heartbeat, HeartbeatSink
from endpoint_agent.report.uploader import Uploader, UploadResult
from endpoint_contract.timestamps import iso_utc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundOutcome:
    ok: bool
    upload: UploadResult | None = None
    heartbeat_sent: bool = False
    error: str | None = None
    retry_in: float | None = None  # seconds until the next attempt, after a failure


class ReportJob:
    def __init__(
        self,
        uploader: Uploader,
        sink: HeartbeatSink,
        *,
        heartbeat: Callable[[], Heartbeat],
        schedule: ReportSchedule,
        clock: Clock,
    ) -> None:
        self._uploader = uploader
        self._sink = sink
        self._heartbeat = heartbeat
        self._schedule = schedule
        self._clock = clock
        self._lock = threading.Lock()  # a final flush at shutdown may race the scheduled run
        self.last_success_at: datetime | None = None
        # Upload and heartbeat are two requests: status tells each apart (an upload may be done
        # while its heartbeat is still in flight or failing).
        self.last_upload_at: datetime | None = None
        self.last_error: str | None = None

    def run(self, *, force: bool = False) -> RoundOutcome | None:
        """A round if one is due (or `force`); None when it is not time yet."""
        with self._lock:
            if not force and not self._schedule.due():
                return None
            return self._round()

    def tick(self) -> None:
        """The scheduled entry point: a round when one is due."""
        self.run()

    def flush(self) -> None:
        """At shutdown: one last round if the server was answering (a dead one must not delay the stop)."""
        if self.healthy:
            self.run(force=True)

    @property
    def healthy(self) -> bool:
        """The last round went through and none failed since."""
        return self.last_success_at is not None and self._schedule.failures == 0

    def _round(self) -> RoundOutcome:
        result: UploadResult | None = None
        stage: Literal["upload", "heartbeat"] = "upload"
        try:
            result = self._uploader.upload()
            self.last_upload_at = self._clock.now()
            if result.acked or result.rejected:
                logger.info(
                    "uploaded %d event(s) in %d request(s)%s",
                    result.acked,
                    result.requests,
                    f"; {result.rejected} refused by the server" if result.rejected else "",
                )
            stage = "heartbeat"
            self._sink.post_heartbeat(self._heartbeat().to_json())
        except ServerUnavailable as exc:
            return self._failed(stage, result, str(exc), exc.retry_after, logging.WARNING)
        except ServerRejected as exc:
            # 401/403/404...: our credential or the server's setup is wrong; retrying unchanged may
            # work once an operator fixes it (or the client re-enrolls), so keep the events and back off.
            return self._failed(stage, result, f"HTTP {exc.status_code}: {exc}", None, logging.ERROR)
        except ServerError as exc:
            return self._failed(stage, result, str(exc), None, logging.WARNING)
        except StoreError as exc:
            return self._failed(stage, result, str(exc), None, logging.ERROR)
        self._schedule.succeeded(more=result.more)
        self.last_success_at = self._clock.now()
        self.last_error = None
        return RoundOutcome(ok=True, upload=result, heartbeat_sent=True)

    def _failed(
        self, stage: str, result: UploadResult | None, error: str, retry_after: float | None, level: int
    ) -> RoundOutcome:
        wait = self._schedule.failed(retry_after)
        self.last_error = f"{stage}: {error}"
        logger.log(
            level,
            "%s failed (%s); next attempt in %.1fs (%d failure(s) in a row)",
            stage,
            error,
            wait,
            self._schedule.failures,
        )
        return RoundOutcome(ok=False, upload=result, error=self.last_error, retry_in=wait)

    def status(self) -> dict[str, object]:
        """For status.json: how reporting to the server goes."""
        return {
            "last_success_at": iso_utc(self.last_success_at) if self.last_success_at else None,
            "last_upload_at": iso_utc(self.last_upload_at) if self.last_upload_at else None,
            "last_error": self.last_error,
            "failures_in_a_row": self._schedule.failures,
            "next_attempt_in_seconds": round(self._schedule.seconds_until_due(), 1),
            "uploaded_since_start": self._uploader.acked_total,
            "rejected_events": self._uploader.rejected_count(),
        }


__all__ = ["ReportJob", "RoundOutcome"]
