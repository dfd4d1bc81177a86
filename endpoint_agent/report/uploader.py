"""Drain the local outbox to the server: `POST /api/v1/events` in batches, removing only what it acknowledged.

    uploader = Uploader(store, sink, clock=clock)
    result = uploader.upload()          # raises ServerError when the server cannot take events now

- Oldest first, at most 500 events and 1 MiB of request body per batch (the server's limits). Each
  event goes out as the JSON text the store holds (encoded once, when recorded), so its size is exact.
- An event is marked uploaded only when its `event_id` is in the server's `acked` list, right after that
  batch: a crash or kill -9 at any point resends at most the unacknowledged batch, which the server
  stores once (idempotent by event_id).
- A batch the server refuses as malformed (400/413/422) is split in halves until the offending event is
  alone; that event is set aside ("rejected": kept in the store, never resent, counted in the heartbeat)
  so one bad record cannot block every later one. Every other failure (network, 5xx, 429, 401, 403)
  leaves the batch queued and propagates, so the caller backs off (report.backoff).
- Events the bounded store dropped are reported once: an `events_dropped` agent event carrying the count
  since the last report. The report is persisted before it is sent and resent with the same event_id until
  acknowledged, so the count reaches the server exactly once even across crashes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from endpoint_agent.clock import Clock
from endpoint_agent.errors import ServerRejected
from endpoint_agent.report.store import StoredEvent, StoreLimits, ViolationStore
from endpoint_contract.events import AgentEvent, add_keys, batch_body
from endpoint_contract.timestamps import iso_utc

logger = logging.getLogger(__name__)

MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 1024 * 1024
_ENVELOPE_BYTES = len(batch_body([]))
# Statuses that say "this request body is wrong": find the bad event instead of retrying it unchanged.
_MALFORMED = frozenset({400, 413, 422})
# How many rejected events are remembered (and skipped); more than this are retried like any other.
_MAX_REJECTED = 1000

META_DROPPED = "dropped"  # the store's own running total of dropped events
META_DROPPED_REPORTED = "upload.dropped_reported"
META_DROP_REPORT = "upload.drop_report"
META_REJECTED = "upload.rejected"


class BatchSink(Protocol):
    """Where batches go: the server client in production, a double in tests."""

    def post_events(self, events: Sequence[str]) -> Sequence[str]:
        """POST one batch of events, each the JSON text of one event (body: `batch_body(events)`);
        returns the event_ids the server holds. Raises ServerUnavailable (temporary, may carry
        retry_after) or ServerRejected (the server refused the request; `status_code`)."""
        ...


@dataclass(frozen=True)
class UploadResult:
    acked: int = 0  # events the server acknowledged in this round
    requests: int = 0
    rejected: int = 0  # events set aside in this round
    more: bool = False  # the round stopped at its batch limit with events left


@dataclass(frozen=True)
class _Item:
    event_id: str
    text: str  # the event's JSON, as sent
    size: int  # its bytes in the request body


def _item(event_id: str, text: str) -> _Item:
    return _Item(event_id, text, len(text.encode("utf-8")))


def wire_text(event: StoredEvent) -> str:
    """The JSON text the server expects for a stored event (API.md, POST /events).

    What this agent recorded is sent as stored, with `last_seen` (kept outside the append-only
    payload) added; a row an older agent wrote without its `kind`, `event_id` or `detected_at`
    is completed from the row's columns.
    """
    payload = event.payload
    text = event.text
    if (
        not text
        or (payload.get("kind"), payload.get("event_id")) != (event.kind, event.event_id)
        or ("detected_at" not in payload)
    ):
        completed = {**payload, "kind": event.kind, "event_id": event.event_id}  # the row's id is acked
        completed.setdefault("detected_at", event.created_at)
        text = json.dumps(completed, sort_keys=True, allow_nan=False, default=str)
    if event.kind == "violation" and event.last_seen and "last_seen" not in payload:
        text = add_keys(text, {"last_seen": event.last_seen})
    return text


class Uploader:
    def __init__(
        self,
        store: ViolationStore,
        sink: BatchSink,
        *,
        clock: Clock,
        limits: StoreLimits | None = None,
        max_events: int = MAX_BATCH_EVENTS,
        max_bytes: int = MAX_BATCH_BYTES,
        max_requests: int = 100,
    ) -> None:
        if not 1 <= max_events <= MAX_BATCH_EVENTS or max_bytes <= _ENVELOPE_BYTES:
            raise ValueError("batch limits out of range")
        self._store = store
        self._sink = sink
        self._clock = clock
        self._limits = limits
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._max_requests = max_requests
        self.acked_total = 0  # since this process started

    # -- public --------------------------------------------------------------------------------

    def upload(self) -> UploadResult:
        """One round: send batches until the outbox is empty (or `max_requests` were made)."""
        acked = requests = rejected = 0
        while requests < self._max_requests:
            skip = self.rejected_ids()
            batch = self._assemble(skip, self._drop_report())
            if not batch:
                return UploadResult(acked, requests, rejected)
            sent = _Round()
            self._send(batch, sent)
            acked, requests, rejected = acked + sent.acked, requests + sent.requests, rejected + sent.rejected
            if sent.acked == 0 and sent.rejected == 0:
                logger.warning("the server acknowledged none of %d event(s); retrying next round", len(batch))
                return UploadResult(acked, requests, rejected)
        return UploadResult(acked, requests, rejected, more=True)

    def rejected_ids(self) -> set[str]:
        return {r["event_id"] for r in self._rejected_records()}

    def rejected_count(self) -> int:
        return len(self._rejected_records())

    def dropped_total(self) -> int:
        value = self._store.get_meta(META_DROPPED)
        return value if isinstance(value, int) else 0

    def _now_iso(self) -> str:
        return iso_utc(self._clock.now())

    # -- batches -------------------------------------------------------------------------------

    def _assemble(self, skip: set[str], report: dict[str, Any] | None) -> list[_Item]:
        budget = self._max_bytes - _ENVELOPE_BYTES
        batch: list[_Item] = []
        used = 0
        if report is not None:
            item = _item(report["event_id"], json.dumps(report, sort_keys=True, allow_nan=False))
            batch.append(item)
            used = item.size
        # Stored sizes are close to the wire sizes; read a little more and let the exact budget decide.
        rows = self._store.pending(limit=self._max_events + len(skip), max_bytes=2 * self._max_bytes)
        for row in rows:
            if row.event_id in skip:
                continue
            if len(batch) >= self._max_events:
                break
            try:
                item = _item(row.event_id, wire_text(row))
            except (TypeError, ValueError) as exc:
                self._reject(row.event_id, 0, f"not valid JSON: {exc}")
                skip.add(row.event_id)
                continue
            size = item.size
            comma = 1 if batch else 0
            if used + comma + size > budget:
                if not batch:
                    self._reject(row.event_id, 413, f"{size} bytes: larger than a whole batch")
                    skip.add(row.event_id)
                    continue
                break
            batch.append(item)
            used += comma + size
        return batch

    def _send(self, batch: list[_Item], sent: _Round) -> None:
        """POST `batch`, ack what the server holds; split a malformed batch to isolate the bad event."""
        sent.requests += 1
        try:
            acked = self._sink.post_events([item.text for item in batch])
        except ServerRejected as exc:
            if exc.status_code not in _MALFORMED:
                raise
            if len(batch) == 1:
                self._reject(batch[0].event_id, exc.status_code, str(exc))
                sent.rejected += 1
                return
            middle = len(batch) // 2
            self._send(batch[:middle], sent)
            self._send(batch[middle:], sent)
            return
        ids = {item.event_id for item in batch}
        held = ids.intersection(acked)
        report = self._store.get_meta(META_DROP_REPORT)
        if isinstance(report, dict) and report.get("event_id") in held:
            self._drop_report_delivered(report)
            held.discard(report["event_id"])
            sent.acked += 1
        if held:
            self._store.ack(held, at=self._clock.now())
            sent.acked += len(held)
            self.acked_total += len(held)

    # -- rejected events -----------------------------------------------------------------------

    def _rejected_records(self) -> list[dict[str, Any]]:
        value = self._store.get_meta(META_REJECTED)
        if not isinstance(value, list):
            return []
        return [r for r in value if isinstance(r, dict) and isinstance(r.get("event_id"), str)]

    def _reject(self, event_id: str, status: int, error: str) -> None:
        report = self._store.get_meta(META_DROP_REPORT)
        if isinstance(report, dict) and report.get("event_id") == event_id:
            # Our own report refused: nothing to resend it as; do not loop on it.
            logger.error("the server refused the events_dropped report (%s): %s", status, error)
            self._drop_report_delivered(report)
            return
        logger.error(
            "the server refused event %s (HTTP %s): %s; it stays in the local store and is not resent",
            event_id,
            status,
            error,
        )
        records = self._rejected_records()
        records.append({"event_id": event_id, "status": status, "error": error[:500], "at": self._now_iso()})
        self._store.set_meta(META_REJECTED, records[-_MAX_REJECTED:])

    # -- dropped-events report -----------------------------------------------------------------

    def _drop_report(self) -> dict[str, Any] | None:
        """The pending events_dropped event (created and persisted first when new drops happened)."""
        report = self._store.get_meta(META_DROP_REPORT)
        if isinstance(report, dict) and isinstance(report.get("event"), dict):
            return dict(report["event"])
        total = self.dropped_total()
        reported = self._store.get_meta(META_DROPPED_REPORTED)
        reported = reported if isinstance(reported, int) else 0
        if total <= reported:
            return None
        detail: dict[str, Any] = {"total_dropped": total}
        if self._limits is not None:
            detail.update(queue_max_events=self._limits.max_events, queue_max_bytes=self._limits.max_bytes)
        event = AgentEvent(
            event_id=str(uuid.uuid4()),
            detected_at=self._clock.now(),
            type="events_dropped",
            count=total - reported,
            detail=detail,
        ).to_json()
        # Persisted before it is sent: a retry after a crash resends this very event_id.
        self._store.set_meta(META_DROP_REPORT, {"event_id": event["event_id"], "upto": total, "event": event})
        logger.warning("reporting %d event(s) dropped by the full local store", total - reported)
        return event

    def _drop_report_delivered(self, report: Mapping[str, Any]) -> None:
        upto = report.get("upto")
        # One transaction: the count moves to "reported" exactly when the report stops being pending.
        self._store.commit_tick(
            meta={
                META_DROPPED_REPORTED: upto if isinstance(upto, int) else self.dropped_total(),
                META_DROP_REPORT: None,
            }
        )


@dataclass
class _Round:
    acked: int = 0
    requests: int = 0
    rejected: int = 0


__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_EVENTS", "BatchSink", "UploadResult", "Uploader", "wire_text"]
