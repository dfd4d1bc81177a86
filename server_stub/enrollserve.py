"""POST /enroll: the route's logic, and a plain ASGI layer in front of it that answers most calls.

The layer sits after authentication, the rate limits and the body read (server_stub/middleware.py)
and answers a well-formed enrollment itself: the body decoded and validated as the framework would
(json.loads, then EnrollRequest), the same logic as the route, errors answered by the application's
own handlers -- without the framework's routing, dependency resolution and response validation,
which cost more CPU than the enrollment itself. Anything else (another content type, a body
that does not validate, no enroll credential) goes on to the route
(server_stub/routes/agent.py), which answers it exactly as before.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from endpoint_agent.errors import StoreError
from server_stub.asgi import handled, is_json, posted_by, replay
from server_stub.auth import Principal, Role, hash_node_key, new_node_key
from server_stub.context import ServerContext
from server_stub.enrollbatch import EnrollmentsBusy
from server_stub.errors import ApiError, Conflict, ServiceUnavailable, Unauthorized
from server_stub.models import EnrollRequest, EnrollResponse
from server_stub.store import EnrollRefused
from server_stub.store.hosts import Enrollment

BUSY_RETRY_AFTER = 2  # seconds, as the admission control answers (server_stub/admission.py)


async def enroll_host(ctx: ServerContext, principal: Principal, body: EnrollRequest) -> EnrollResponse:
    """Exchange the enroll secret (or an enroll token) for this host's own node key."""
    if ctx.limits is not None:  # each host its own bucket (server_stub/limits.py)
        ctx.limits.admit_enrolling_host(body.machine_id)
    if principal.enroll_token is not None and not await run_in_threadpool(
        ctx.store.enroll_tokens.use, principal.enroll_token, ctx.now()
    ):
        raise Unauthorized("enroll token expired or used up")
    node_key = new_node_key()
    item = Enrollment(
        machine_id=body.machine_id,
        hostname=body.hostname,
        node_key_hash=hash_node_key(node_key),
        current_key_hash=hash_node_key(body.node_key) if body.node_key else None,
    )
    try:
        if ctx.enrollments is not None:  # written with the others arriving now (server_stub/enrollbatch.py)
            host_id = await ctx.enrollments.enroll(item)
        else:
            host_id = await run_in_threadpool(_enroll_alone, ctx, item)
    except EnrollRefused:
        raise Conflict(
            "this machine_id is already enrolled: re-enrolling needs the host's current node_key "
            "or an admin's reset (endpoint-admin hosts reset HOST)"
        ) from None
    except EnrollmentsBusy as exc:
        raise ServiceUnavailable(
            f"cannot enroll now ({exc}); retry later", headers={"Retry-After": str(BUSY_RETRY_AFTER)}
        ) from None
    return EnrollResponse(host_id=host_id, node_key=node_key)


def _enroll_alone(ctx: ServerContext, item: Enrollment) -> str:
    return ctx.store.hosts.enroll(
        machine_id=item.machine_id,
        hostname=item.hostname,
        node_key_hash=item.node_key_hash,
        now=ctx.now(),
        current_key_hash=item.current_key_hash,
    )


def parse_enroll_body(headers: list[tuple[bytes, bytes]], body: bytes) -> EnrollRequest | None:
    """The request as the framework would validate it; None for anything the route must answer."""
    content_type = next((value for name, value in headers if name == b"content-type"), None)
    if not is_json(content_type):
        return None
    try:
        return EnrollRequest.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # ValueError: also a body that is not JSON
        return None


class EnrollFastPath:
    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app, self.path = app, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = posted_by(scope, self.path, Role.ENROLL)
        if principal is None:
            await self.app(scope, receive, send)
            return
        message = await receive()  # the whole body, read before (BodyLimitMiddleware)
        body = message.get("body", b"") if message["type"] == "http.request" else b""
        request = None if message.get("more_body") else parse_enroll_body(scope["headers"], body)
        if request is None:
            await self.app(scope, replay(message, receive), send)
            return
        ctx: ServerContext = scope["app"].state.ctx
        response: Response
        try:
            answer = await enroll_host(ctx, principal, request)
            response = JSONResponse({"host_id": answer.host_id, "node_key": answer.node_key})
        except (ApiError, StoreError) as exc:  # answered by the application's own handlers
            response = await handled(scope, exc)
        await response(scope, receive, send)
