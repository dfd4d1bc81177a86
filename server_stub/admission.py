"""Admission control: at most `limit` requests in progress per process; past it, 503 at once.

An overloaded server that queues every request answers all of them late, after the agents gave
up (and retried); one that refuses the excess at once keeps answering what it admitted at full
speed, and the refused agents come back after Retry-After (they honour it, with jitter:
endpoint_agent/sync/client.py). The count is of requests, not connections: idle keep-alive
connections of a large fleet cost nothing here. /healthz is never refused (a load balancer must
not take a busy server for a dead one). The first layer a request meets (server_stub/frontdoor.py)
keeps the count and refuses, before any other work -- but a node's poll or heartbeat answered from
memory holds no slot and is answered past the cap (a 503 costs as much as that answer, and would
bring the agent back in seconds); only the flood refusal (the event loop lagging) refuses it.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Scope, Send

from server_stub.middleware import error_response

RETRY_AFTER_SECONDS = 2
BUSY_MESSAGE = "server busy; retry later"

# The refusal, encoded once: it is sent most when the server can least afford to build it.
_REFUSAL = error_response(503, BUSY_MESSAGE, {"Retry-After": str(RETRY_AFTER_SECONDS)})
REFUSAL_BODY: bytes = bytes(_REFUSAL.body)
_REFUSAL_HEADERS = list(_REFUSAL.raw_headers)
_REFUSAL_CLOSING = [*_REFUSAL_HEADERS[:1], (b"connection", b"close"), *_REFUSAL_HEADERS[1:]]


class Admission:
    """The requests in progress in this process (the event loop is single-threaded: a plain count)."""

    def __init__(self, limit: int, on_refused: Callable[[], None]) -> None:
        self.limit = limit
        self.on_refused = on_refused
        self.in_flight = 0
        # Also full while the event loop lags under a flood (server_stub/listener.py), if set.
        self.overloaded: Callable[[], bool] | None = None

    def capped(self) -> bool:
        """`limit` requests in progress: one more waits for a thread (a node's poll or heartbeat
        answered from memory takes none, and is answered: server_stub/frontdoor.py)."""
        return self.in_flight >= self.limit

    def flooded(self) -> bool:
        """The event loop lags under a flood: everything (but /healthz) is refused."""
        return self.overloaded is not None and self.overloaded()

    async def refuse(self, scope: Scope, send: Send) -> None:
        """503 + Retry-After; the connection closed when a body was announced (it is never read)."""
        self.on_refused()
        headers = refusal_headers(announces_body(scope["headers"]))
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": REFUSAL_BODY})


def announces_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            return True
    return False


def refusal_headers(with_body: bool) -> list[tuple[bytes, bytes]]:
    """The refusal's headers; with Connection: close when a body was announced (it is never read)."""
    return _REFUSAL_CLOSING if with_body else _REFUSAL_HEADERS
