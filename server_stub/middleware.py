"""ASGI middleware: authentication and rate limits before the body, then a bounded, timed body read."""

from __future__ import annotations

import asyncio
import logging
import math

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from endpoint_agent.errors import StoreError
from server_stub.auth import Role
from server_stub.errors import ApiError
from server_stub.limits import Limits
from server_stub.ratelimit import RateLimiter

log = logging.getLogger("server_stub.app")  # the application's handlers log these (server_stub/app.py)

UNLIMITED_PATHS = frozenset({"/api/v1/healthz"})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    """The application's answer to an ApiError (its handler, and the layers that answer before it)."""
    return error_response(exc.status_code, exc.message, exc.headers)


def store_error_response(exc: StoreError) -> JSONResponse:
    """The application's answer to a database failure: logged, 503 + Retry-After."""
    log.error("store failure: %s", exc, exc_info=exc)
    return error_response(503, "database unavailable; retry later", {"Retry-After": "5"})


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` (413), by Content-Length and by the bytes actually sent.

    The body is read in full (at most max_bytes) before the application runs, so a request that
    turns out too large midway has not been half-processed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        try:
            async with asyncio.timeout(self.timeout):  # a trickled body does not hold a worker forever
                body = await self._read(receive)
        except TimeoutError:
            await error_response(408, f"request body not received within {self.timeout:g} s")(
                scope, receive, send
            )
            return
        if body is None:
            await self._too_large()(scope, receive, send)
            return
        if body is _DISCONNECTED:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> JSONResponse:  # made when needed: a response costs ~30 us to build
        return error_response(413, f"request body larger than {self.max_bytes} bytes")

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body; None when it grows over max_bytes; _DISCONNECTED if the client left."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _DISCONNECTED
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


_DISCONNECTED = b"\x00disconnected"  # a sentinel compared by identity, never a real body


class AuthGateMiddleware:
    """Who is calling, decided from the headers before a byte of the body is read; then rate limits.

    A request with a bearer credential is identified first (server_stub/auth.py); a known principal
    is limited by who it is (`role`, and the host for a node key), however the header is spelled.
    A request without one, and every failed attempt, is limited by the client's address -- and from
    an address that has run dry a node key is refused before it is even looked up (the static admin,
    reader and enroll secrets still pass: comparing them costs no database), so a flood of made-up
    tokens costs neither database work nor a body read. API paths answer 401 here for a
    missing or unknown credential; the route's dependency then only checks the role (403).
    """

    def __init__(
        self,
        app: ASGIApp,
        principals: RateLimiter,
        addresses: RateLimiter,
        api_prefix: str,
        enrollments: Limits | None = None,
    ) -> None:
        self.app = app
        self.principals = principals
        self.addresses = addresses
        self.api_prefix = api_prefix + "/"
        self.enrollments = enrollments

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        state = scope.get("state")
        # Unless identified and admitted already, by the first layer (server_stub/frontdoor.py).
        if scope["type"] != "http" or path in UNLIMITED_PATHS or (state and "principal" in state):
            await self.app(scope, receive, send)
            return
        address = address_key(scope.get("client"))
        token = bearer_token(Headers(scope=scope).get("authorization"))
        on_api = path.startswith(self.api_prefix)
        if token is None:
            if not await self._admit(self.addresses, address, scope, receive, send):
                return
            if on_api:
                await _unauthorized("missing credentials: send 'Authorization: Bearer <token>'")(
                    scope, receive, send
                )
                return
            await self.app(scope, receive, send)
            return
        authenticator = scope["app"].state.ctx.auth
        # Static secrets and node keys held in memory (server_stub/keycache.py): no thread, no query.
        decided, principal = authenticator.identify_from_memory(token)
        if not decided:
            if self.addresses.blocked(address):  # node keys from a flooding address: not even looked up
                await too_many(self.addresses.wait(address))(scope, receive, send)
                return
            principal = await run_in_threadpool(authenticator.identify, token)
        if principal is None:
            self.addresses.acquire(address)  # a failed attempt counts against the address
            if on_api:
                await _unauthorized("invalid credentials")(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if principal.role is Role.ENROLL and self.enrollments is not None:
            # Not one bucket for the whole fleet: the credential and the address each have a large
            # one here, and each enrolling host its own once its body is read (server_stub/limits.py).
            credential = principal.enroll_token or "fleet-secret"
            wait = self.enrollments.admit_enrollment(credential, address)
            if wait > 0:
                await too_many(wait)(scope, receive, send)
                return
        elif not await self._admit(self.principals, principal.limit_key, scope, receive, send):
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _admit(
        self, limiter: RateLimiter, key: str, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        wait = limiter.acquire(key)
        if wait > 0:
            await too_many(wait)(scope, receive, send)
            return False
        return True


def address_key(client: tuple[str, int] | None) -> str:
    """The address buckets' key of a client (ASGI's scope["client"])."""
    return "addr:" + (client[0] if client else "unknown")


def bearer_token(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <token>` header (scheme in any case), or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# Refused before the body: the connection is closed after the answer, so an unread body is never
# kept and a slow client cannot keep the socket.
def too_many(wait: float) -> JSONResponse:
    retry = str(max(1, math.ceil(wait)))
    return error_response(
        429, "too many requests; retry later", {"Retry-After": retry, "Connection": "close"}
    )


def _unauthorized(message: str) -> JSONResponse:
    return error_response(401, message, {"WWW-Authenticate": "Bearer", "Connection": "close"})
