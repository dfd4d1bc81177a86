"""Admission control: at most `limit` requests in progress per process; past it, 503 at once.

An overloaded server that queues every request answers all of them late, after the agents gave
up (and retried); one that refuses the excess at once keeps answering what it admitted at full
speed, and the refused agents come back after Retry-After (they honour it, with jitter:
endpoint_agent/sync/client.py). The count is of requests, not connections: idle keep-alive
connections of a large fleet cost nothing here. /healthz is never refused (a load balancer must
not take a busy server for a dead one).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server_stub.middleware import error_response

RETRY_AFTER_SECONDS = 2


class AdmissionMiddleware:
    def __init__(
        self, app: ASGIApp, limit: int, exempt: Collection[str], on_refused: Callable[[], None]
    ) -> None:
        self.app, self.limit, self.exempt, self.on_refused = app, limit, exempt, on_refused
        self.in_flight = 0  # the event loop is single-threaded: a plain counter is exact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.on_refused()
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            request = Headers(scope=scope)
            if request.get("content-length", "0") != "0" or "transfer-encoding" in request:
                headers["Connection"] = "close"  # the unread body is never taken
            await error_response(503, "server busy; retry later", headers)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
