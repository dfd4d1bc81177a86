"""ASGI middleware: request body cap and per-key rate limit, both answered in JSON."""

from __future__ import annotations

import hashlib
import math

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server_stub.ratelimit import RateLimiter

UNLIMITED_PATHS = frozenset({"/api/v1/healthz"})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` (413), by Content-Length and by the bytes actually sent.

    The body is read in full (at most max_bytes) before the application runs, so a request that
    turns out too large midway has not been half-processed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, f"request body larger than {self.max_bytes} bytes")
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RateLimitMiddleware:
    """429 with Retry-After once a credential (or, without one, a client address) runs dry."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self.limiter.acquire(_client_key(scope))
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            await error_response(429, "too many requests; retry later", {"Retry-After": retry})(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)


def _client_key(scope: Scope) -> str:
    auth = Headers(scope=scope).get("authorization")
    if auth:
        # Keyed by a digest so the limiter never holds a secret in clear.
        return "cred:" + hashlib.sha256(auth.encode("utf-8", "replace")).hexdigest()
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")
