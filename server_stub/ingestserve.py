"""POST /events: storing a node's batch, and a plain ASGI layer in front of the route that does it.

The layer sits after authentication, the rate limits and the body read (server_stub/middleware.py)
and answers a node's valid batch itself: decoded once (server_stub/batch.py) in a worker thread
and stored there, or on PostgreSQL queued as it came (`Posted`) and decoded by the group writer
that stores it with the uploads arriving at the same time (one transaction,
server_stub/ingestgroup.py: no worker thread, no hop through the event loop in between), the
acknowledgement written as the route writes it (`ack_body`), errors answered by the
application's own handlers -- without the framework's routing, dependency resolution and response
validation, which cost a small batch more CPU than storing it. Anything else (no node credential,
a body announced in parts, a batch that does not validate or is too large) goes on to the route
(server_stub/routes/agent.py), which answers it exactly as before.

On PostgreSQL a node's upload does not even reach that layer: the first layer hands it to
`UploadDoor` (server_stub/frontdoor.py FrontDoor.uploads, set in server_stub/app.py), which does
the same before the framework's error, count, authentication and body layers (the node key from
memory, its rate limit and the body limits decided as the first layer decides a heartbeat's).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from endpoint_agent.errors import StoreError
from server_stub.asgi import JSON, handled, posted_by, replay
from server_stub.auth import Principal, Role
from server_stub.batch import BatchInvalid, BatchUnreadable, Received, parse_batch
from server_stub.context import ServerContext
from server_stub.errors import ApiError
from server_stub.frontdoor import Answer, NodeHead
from server_stub.ingest import audit_stored
from server_stub.middleware import api_error_response, store_error_response
from server_stub.store.events import VIOLATION, EventInsert, Upload, received_rows

if TYPE_CHECKING:
    from server_stub.frontdoor import FrontDoor

log = logging.getLogger(__name__)


def store_uploaded(ctx: ServerContext, principal: Principal, received: list[Received]) -> list[str]:
    """Store a node's validated batch (all or nothing; ids stored before are skipped, not
    duplicated); returns the ids acknowledged: every id of the batch, once, in upload order."""
    rows = _rows(principal, received)
    return _stored(
        ctx, principal, received, rows, ctx.store.events.insert_batch(principal.host_id, rows, ctx.now())
    )


def _rows(principal: Principal, received: list[Received]) -> list[EventInsert]:
    host = principal.host
    return received_rows(received, principal.host_id, host.hostname if host is not None else None)


def _stored(
    ctx: ServerContext,
    principal: Principal,
    received: list[Received],
    rows: list[EventInsert],
    stored: list[EventInsert],
) -> list[str]:
    """Count and audit what an upload stored; the ids acknowledged."""
    violations = sum(1 for row in rows if row.kind == VIOLATION)
    if violations:
        ctx.metrics.events_received("violation", violations)
    if len(rows) > violations:
        ctx.metrics.events_received("agent", len(rows) - violations)
    audit_stored(log, principal.host_id, received, stored)
    return list(dict.fromkeys(r.event.event_id for r in received))


def _parse(ctx: ServerContext, body: bytes) -> list[Received] | None:
    """The batch's events, or None when the route must answer (invalid, too many events)."""
    try:
        received = parse_batch(body)
    except (BatchInvalid, BatchUnreadable):
        return None
    return received if len(received) <= ctx.config.max_events else None


def _parse_and_store(ctx: ServerContext, principal: Principal, body: bytes) -> list[str] | None:
    """The acknowledged ids, or None when the route must answer."""
    received = _parse(ctx, body)
    return None if received is None else store_uploaded(ctx, principal, received)


@dataclass(slots=True)
class Posted:
    """A node's upload as it arrived, decoded in a group writer's thread (server_stub/ingestgroup.py):
    no worker thread and no hop through the event loop before it is queued."""

    ctx: ServerContext
    principal: Principal
    body: bytes
    received: list[Received] = field(default_factory=list)
    rows: list[EventInsert] = field(default_factory=list)

    def upload(self) -> Upload | None:
        """What to store, or None when the route must answer (invalid, too many events)."""
        received = _parse(self.ctx, self.body)
        if received is None:
            return None
        self.received, self.rows = received, _rows(self.principal, received)
        return Upload(self.principal.host_id, self.rows)

    def acked(self, stored: list[EventInsert]) -> list[str]:
        ids = _stored(self.ctx, self.principal, self.received, self.rows, stored)
        # Let go here, in the writer's thread: not freed (thousands of objects) in the event loop's.
        self.received, self.rows, self.body = [], [], b""
        return ids


def ack_body(ids: list[str]) -> bytes:
    """`{"acked": [...]}` as the route's JSON encoder writes it. Every id matched the contract's
    EventId pattern (lower-case hex and dashes), so each is its JSON string between quotes."""
    return ('{"acked":["' + '","'.join(ids) + '"]}').encode("ascii") if ids else b'{"acked":[]}'


class IngestFastPath:
    fast = True  # False: every upload goes to the route (tests compare the two)

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app, self.path = app, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = posted_by(scope, self.path, Role.NODE) if self.fast else None
        if principal is None:
            await self.app(scope, receive, send)
            return
        message = await receive()  # the whole body, read before (BodyLimitMiddleware)
        if message["type"] != "http.request" or message.get("more_body"):
            await self.app(scope, replay(message, receive), send)
            return
        ctx: ServerContext = scope["app"].state.ctx
        response: Response
        try:
            body = message.get("body", b"")
            if ctx.uploads is not None:  # decoded and stored by a group writer
                # A Posted's outcome is its acked ids (Posted.acked) or None.
                acked = cast(list[str] | None, await ctx.uploads.submit(Posted(ctx, principal, body)))
            else:
                acked = await run_in_threadpool(_parse_and_store, ctx, principal, body)
        except (ApiError, StoreError) as exc:
            response = await handled(scope, exc)
        else:
            if acked is None:  # the route names what is wrong, as it always has
                await self.app(scope, replay(message, receive), send)
                return
            response = Response(ack_body(acked), media_type=JSON)
        await response(scope, receive, send)


class UploadDoor:
    """A node's POST /events taken by the first layer (server_stub/frontdoor.py) when uploads are
    stored in groups (PostgreSQL): the node key from memory and its rate limit by the first layer's
    own decisions, the body read (within --max-body-bytes and --body-timeout), queued undecoded for
    a group writer, the acknowledgement written -- without the framework's error, body, auth and
    count layers. Whatever is not certain goes on to the framework, which answers as it always has:
    no node key held in memory, no Content-Length within the limit, a body that does not decode
    (the route's 422 names why: it is read again from what was read here)."""

    def __init__(self, front: FrontDoor) -> None:
        self.front = front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front, ctx = self.front, self.front.ctx
        if not IngestFastPath.fast:  # (tests compare the answers with the route's)
            await front.app(scope, receive, send)
            return
        head = NodeHead.read(scope["headers"])
        principal = front.node(head) if scope["method"] == "POST" else None
        if principal is None or ctx.uploads is None or not front.readable(head):
            await front.app(scope, receive, send)
            return
        if not await front.admitted(scope, send, principal):
            return
        try:
            async with asyncio.timeout(ctx.config.body_timeout):
                body = await _whole_body(receive, front.body_limit)
        except TimeoutError:
            await front.send(scope, send, front.late())
            return
        if body is None:  # the client left
            return
        try:
            acked = cast(list[str] | None, await ctx.uploads.submit(Posted(ctx, principal, body)))
        except ApiError as exc:
            answer = Answer.of(api_error_response(exc))
        except StoreError as exc:
            answer = Answer.of(store_error_response(exc))
        except Exception as exc:
            answer = front.failed(exc)
        else:
            if acked is None:  # the route names what is wrong
                await front.app(scope, replay({"type": "http.request", "body": body}, receive), send)
                return
            data = ack_body(acked)
            answer = Answer(200, [(b"content-length", str(len(data)).encode()), _JSON_TYPE], data)
        await front.send(scope, send, answer)


_JSON_TYPE = (b"content-type", JSON.encode())


async def _whole_body(receive: Receive, limit: int) -> bytes | None:
    """The body, its Content-Length within `limit` (checked before; llhttp reads no more than
    announced); None if the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
