"""A test double of the server's agent endpoints, as a sink for the uploader and the heartbeat.

It validates every batch with the contract's request models (endpoint_contract), enforces the
same limits (500 events, 1 MiB body) and keeps the first copy of each event_id, like the real store.
Failures are scripted: `fail_next(exc, ...)` raises those before storing, `fail_at[n] = exc` on the
n-th batch; `lose_next_answer()` stores
the batch and then raises, as when the connection drops after the server committed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from endpoint_agent.errors import ServerRejected, ServerUnavailable
from endpoint_contract.events import EventBatch, batch_body
from endpoint_contract.heartbeat import Heartbeat

MAX_EVENTS = 500
MAX_BODY = 1024 * 1024


class FakeServer:
    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.requests: list[list[dict[str, Any]]] = []
        self.bodies: list[int] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.ack_only: int | None = None  # acknowledge only the first N ids of the next batch
        self.fail_at: dict[int, Exception] = {}  # request number (1-based) -> raised before storing
        self._failures: list[Exception] = []
        self._lose_answers = 0

    def fail_next(self, *errors: Exception) -> None:
        self._failures.extend(errors)

    def lose_next_answer(self, n: int = 1) -> None:
        self._lose_answers += n

    # -- BatchSink -----------------------------------------------------------------------------

    def post_events(self, texts: Sequence[str]) -> list[str]:
        # The body HttpServerClient sends: the events' texts as they are.
        body = batch_body(list(texts))
        size = len(body)
        events = [json.loads(t) for t in texts]
        self.requests.append(events)
        self.bodies.append(size)
        if self._failures:
            raise self._failures.pop(0)
        if len(self.requests) in self.fail_at:
            raise self.fail_at.pop(len(self.requests))
        if size > MAX_BODY:
            raise ServerRejected(f"request body of {size} bytes is larger than 1 MiB", 413)
        if len(events) > MAX_EVENTS:
            raise ServerRejected(f"at most {MAX_EVENTS} events per batch", 413)
        try:
            EventBatch.model_validate_json(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ServerRejected(
                f"invalid request: {'.'.join(map(str, err['loc']))}: {err['msg']}", 422
            ) from None
        for e in events:
            self.stored.setdefault(str(e["event_id"]), dict(e))
        acked = [str(e["event_id"]) for e in events]
        if self.ack_only is not None:
            acked, self.ack_only = acked[: self.ack_only], None
        if self._lose_answers:
            self._lose_answers -= 1
            raise ServerUnavailable("connection reset after the request was sent")
        return acked

    # -- HeartbeatSink -------------------------------------------------------------------------

    def post_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        if self._failures:
            raise self._failures.pop(0)
        Heartbeat.model_validate_json(json.dumps(dict(heartbeat)))
        self.heartbeats.append(dict(heartbeat))

    # -- views ---------------------------------------------------------------------------------

    def violations(self) -> list[dict[str, Any]]:
        return [e for e in self.stored.values() if e["kind"] == "violation"]

    def agent_events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.stored.values() if e["kind"] == "agent" and type_ in (None, e["type"])]

    def posted_ids(self) -> list[str]:
        return [str(e["event_id"]) for batch in self.requests for e in batch]
