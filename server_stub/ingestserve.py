"""POST /events: storing a node's batch, and a plain ASGI layer in front of the route that does it.

The layer sits after authentication, the rate limits and the body read (server_stub/middleware.py)
and answers a node's valid batch itself: decoded once (server_stub/batch.py) in a worker thread
and stored there, or on PostgreSQL with the uploads arriving at the same time (one transaction,
server_stub/ingestgroup.py), the acknowledgement written as the route writes it, errors answered by the
application's own handlers -- without the framework's routing, dependency resolution and response
validation, which cost a small batch more CPU than storing it. Anything else (no node credential,
a body announced in parts, a batch that does not validate or is too large) goes on to the route
(server_stub/routes/agent.py), which answers it exactly as before.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from endpoint_agent.errors import StoreError
from server_stub.asgi import handled, posted_by, replay
from server_stub.auth import Principal, Role
from server_stub.batch import BatchInvalid, BatchUnreadable, Received, parse_batch
from server_stub.context import ServerContext
from server_stub.errors import ApiError
from server_stub.ingest import audit_stored
from server_stub.ingestgroup import UploadGroups
from server_stub.store.events import VIOLATION, EventInsert, Upload, received_rows

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


def _parse_and_store_grouped(
    ctx: ServerContext, uploads: UploadGroups, principal: Principal, body: bytes
) -> list[str] | None:
    """`_parse_and_store`, stored with the uploads arriving now (server_stub/ingestgroup.py)."""
    received = _parse(ctx, body)
    if received is None:
        return None
    rows = _rows(principal, received)
    stored = uploads.submit_wait(Upload(principal.host_id, rows))
    return _stored(ctx, principal, received, rows, stored)


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
            if ctx.uploads is not None:
                acked = await run_in_threadpool(_parse_and_store_grouped, ctx, ctx.uploads, principal, body)
            else:
                acked = await run_in_threadpool(_parse_and_store, ctx, principal, body)
        except (ApiError, StoreError) as exc:
            response = await handled(scope, exc)
        else:
            if acked is None:  # the route names what is wrong, as it always has
                await self.app(scope, replay(message, receive), send)
                return
            response = JSONResponse({"acked": acked})
        await response(scope, receive, send)
