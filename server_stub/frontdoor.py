"""The first layer every request meets: admission, then a node's poll and heartbeat answered here.

Every request but /healthz is counted in progress (server_stub/admission.py) and refused with
503 at once past the cap, before any other work. A node's policy poll and heartbeat -- most of
a fleet's traffic -- are then answered here, in plain ASGI, without the framework's error and
exception layers, routing, dependencies, Headers objects and response classes: one pass over
the raw headers, the node key from memory (server_stub/auth.py identify_from_memory), its rate
limit, the answer. They answer exactly what the routes in server_stub/routes/agent.py answer
(status, body, headers), and they are counted in the request metrics like any answer.

Whatever is not certain here goes on, untouched, to the full stack (server_stub/app.py), which
answers as it always has: no or an unknown credential, a key not held in memory, another role,
a body announced otherwise than by a Content-Length within the limit, a heartbeat that does not
validate (the route's 422 says why), a policy copy that must first be loaded, no policy for this
host (404). A request handed on after its node key was identified and its rate limit taken
carries its principal in the scope, so the authentication layer does not count it twice.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from endpoint_contract.heartbeat import Heartbeat
from server_stub.admission import Admission
from server_stub.asgi import is_json, replay
from server_stub.auth import Principal, Role
from server_stub.context import ServerContext
from server_stub.middleware import UNLIMITED_PATHS, bearer_token, error_response, too_many
from server_stub.policyserve import answer_poll

log = logging.getLogger(__name__)

_OK_BODY = b'{"status":"ok"}'  # models.Ok(), as FastAPI serialises it
_OK_HEADERS = [(b"content-length", str(len(_OK_BODY)).encode()), (b"content-type", b"application/json")]


class FrontDoor:
    def __init__(self, app: ASGIApp, ctx: ServerContext, admission: Admission, api_prefix: str) -> None:
        self.app = app
        self.ctx = ctx
        self.admission = admission
        self.poll_path = api_prefix + "/policy"
        self.beat_path = api_prefix + "/heartbeat"
        self.fast = True  # False: every request goes the full way (tests compare the two)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if admission.full():
            self.ctx.metrics.answered(scope["method"], 503)
            await admission.refuse(scope, send)
            return
        admission.in_flight += 1
        try:
            if self.fast and scope["path"] in (self.poll_path, self.beat_path):
                await self._node_call(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            admission.in_flight -= 1

    async def _node_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        poll = method == "GET" and path == self.poll_path
        if not poll and not (method == "POST" and path == self.beat_path):
            await self.app(scope, receive, send)
            return
        authorization = if_none_match = length = content_type = None
        chunked = False
        for name, value in scope["headers"]:  # names arrive lower-cased; the first of each counts
            if name == b"authorization":
                authorization = authorization if authorization is not None else value
            elif name == b"if-none-match":
                if_none_match = if_none_match if if_none_match is not None else value
            elif name == b"content-length":
                length = length if length is not None else value
            elif name == b"content-type":
                content_type = content_type if content_type is not None else value
            elif name == b"transfer-encoding":
                chunked = True
        token = bearer_token(authorization.decode("latin-1")) if authorization is not None else None
        if token is None:
            await self.app(scope, receive, send)
            return
        _, principal = self.ctx.auth.identify_from_memory(token)
        if principal is None or principal.role is not Role.NODE:
            await self.app(scope, receive, send)
            return
        if not poll and (chunked or length is None or not _within(length, self.ctx.config.max_body_bytes)):
            await self.app(scope, receive, send)  # the body layer answers (or reads) it
            return
        wait = self.ctx.limits.principals.acquire(principal.limit_key) if self.ctx.limits else 0.0
        if wait > 0:
            await self._answer(scope, send, too_many(wait))
            return
        scope.setdefault("state", {})["principal"] = principal  # identified and admitted: not again
        try:
            if poll:
                onward = await self._poll(scope, receive, send, principal, if_none_match)
            else:
                onward = await self._heartbeat(scope, receive, send, principal, content_type)
        except Exception as exc:  # answered as the framework's last handler does (server_stub/app.py)
            log.error("unhandled error", exc_info=exc)
            await error_response(500, "internal server error")(scope, _nothing, send)
            return
        if onward is not None:
            await self.app(scope, onward, send)

    async def _poll(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, if_none_match: bytes | None
    ) -> Receive | None:
        """None once answered; else the route answers (with what to read the request from)."""
        rollouts = self.ctx.policies.peek()
        result = None
        if rollouts is not None:
            tag = if_none_match.decode("latin-1") if if_none_match is not None else None
            result = answer_poll(principal.host_id, rollouts, tag)
        if result is None:  # to be loaded first (a worker thread), or 404: the route answers
            return receive
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in result.headers.items()]
        if result.status == 200:  # as starlette's Response adds them; a 304 has neither
            headers.append((b"content-length", str(len(result.body)).encode()))
            headers.append((b"content-type", b"application/json"))
        await self._send(scope, send, result.status, headers, result.body)
        return None

    async def _heartbeat(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, content_type: bytes | None
    ) -> Receive | None:
        try:
            async with asyncio.timeout(self.ctx.config.body_timeout):
                message = await receive()
        except TimeoutError:
            timeout = self.ctx.config.body_timeout
            late = f"request body not received within {timeout:g} s"
            await self._answer(scope, send, error_response(408, late))
            return None
        if message["type"] == "http.disconnect":
            return None  # nobody to answer (as the body layer does)
        body: bytes = message.get("body", b"")
        beat = None
        if not message.get("more_body", False) and is_json(content_type):
            try:
                beat = Heartbeat.model_validate_json(body)
            except ValidationError:
                beat = None  # the route says why, in its own words
        if beat is None:
            return replay(message, receive)
        self.ctx.activity.heartbeat(principal.host_id, beat, self.ctx.now())
        await self._send(scope, send, 200, _OK_HEADERS, _OK_BODY)
        return None

    async def _send(
        self, scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.ctx.metrics.answered(scope["method"], status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, send: Send, response: JSONResponse) -> None:
        self.ctx.metrics.answered(scope["method"], response.status_code)
        await response(scope, _nothing, send)


def _within(length: bytes, limit: int) -> bool:
    return length.isdigit() and int(length) <= limit


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
