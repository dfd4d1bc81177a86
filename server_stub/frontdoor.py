"""The first layer every request meets: admission, then a node's poll and heartbeat answered here.

Every request but /healthz is counted in progress (server_stub/admission.py) and refused with
503 at once past the cap, before any other work -- but a node's policy poll and heartbeat, most of
a fleet's traffic, answered here from memory, take no slot and are answered past the cap (only a
flood, the event loop lagging, refuses them; what they hand on to the framework takes a slot).
They are answered here, in plain ASGI, without the framework's error and
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

The decisions (`FrontDoor.node`, `admit`, `poll`, `beat`, `refusal`) are plain functions of the
request's head and body that give an `Answer`: the HTTP protocol (server_stub/nodeprotocol.py)
takes the same ones in the parser's callbacks, before any ASGI task, and this layer answers what
that protocol handed on (or everything, when uvicorn runs another protocol).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

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


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: status, headers as the application sends them (lower-case names), body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @classmethod
    def of(cls, response: JSONResponse) -> Answer:
        return cls(response.status_code, list(response.raw_headers), bytes(response.body))


_OK = Answer(200, _OK_HEADERS, _OK_BODY)


@dataclass(slots=True)
class NodeHead:
    """What a node's request says in its headers (the first of each counts)."""

    authorization: bytes | None = None
    if_none_match: bytes | None = None
    length: bytes | None = None
    content_type: bytes | None = None
    chunked: bool = False

    @classmethod
    def read(cls, headers: Iterable[tuple[bytes, bytes]]) -> NodeHead:
        first: dict[bytes, bytes] = {}
        for name, value in headers:  # names arrive lower-cased
            first.setdefault(name, value)
        get = first.get
        chunked = b"transfer-encoding" in first
        return cls(
            get(b"authorization"),
            get(b"if-none-match"),
            get(b"content-length"),
            get(b"content-type"),
            chunked,
        )


class FrontDoor:
    def __init__(self, app: ASGIApp, ctx: ServerContext, admission: Admission, api_prefix: str) -> None:
        self.app = app
        self.ctx = ctx
        self.admission = admission
        self.poll_path = api_prefix + "/policy"
        self.beat_path = api_prefix + "/heartbeat"
        self.fast = True  # False: every request goes the full way (tests compare the two)
        self.node_protocol: Any = None  # what server_stub/nodeprotocol.py's connections share
        # A node's POST /events, when taken before the framework (server_stub/ingestserve.py
        # UploadDoor, set by server_stub/app.py on PostgreSQL): holding a slot, as the framework's.
        self.upload_path = api_prefix + "/events"
        self.uploads: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.admission.flooded():
            await self._refuse(scope, send)
        elif self.fast and scope["path"] in (self.poll_path, self.beat_path) and not _admitted(scope):
            await self._node_call(scope, receive, send)  # no slot: what goes on takes one (_onward)
        elif (
            self.fast
            and self.uploads is not None
            and scope["path"] == self.upload_path
            and not _admitted(scope)
        ):
            await self._onward(scope, receive, send, self.uploads)
        else:
            await self._onward(scope, receive, send)

    async def _onward(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp | None = None) -> None:
        """To the framework (or `app`), holding one of the in-flight slots (refused 503 when none is free)."""
        admission = self.admission
        if admission.capped():
            await self._refuse(scope, send)
            return
        admission.in_flight += 1
        try:
            await (app or self.app)(scope, receive, send)
        finally:
            admission.in_flight -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        self.ctx.metrics.answered(scope["method"], 503)
        await self.admission.refuse(scope, send)

    # -- the decisions, shared with server_stub/nodeprotocol.py ----------------------------------

    def node(self, head: NodeHead) -> Principal | None:
        """The node whose key the request carries, when held in memory; else None (hand on)."""
        if head.authorization is None:
            return None
        token = bearer_token(head.authorization.decode("latin-1"))
        if token is None:
            return None
        _, principal = self.ctx.auth.identify_from_memory(token)
        if principal is None or principal.role is not Role.NODE:
            return None
        return principal

    def readable(self, head: NodeHead) -> bool:
        """Whether a heartbeat's body may be read here: a Content-Length within the limit."""
        length = head.length
        return not head.chunked and length is not None and length.isdigit() and int(length) <= self.body_limit

    @property
    def body_limit(self) -> int:
        return self.ctx.config.max_body_bytes

    def admit(self, principal: Principal) -> Answer | None:
        """Takes the node's rate limit: None when admitted, else the 429."""
        return self.admit_key(principal.limit_key)

    def admit_key(self, limit_key: str) -> Answer | None:
        """admit() for the principal whose Principal.limit_key this is."""
        limits = self.ctx.limits
        wait = limits.principals.acquire(limit_key) if limits is not None else 0.0
        return Answer.of(too_many(wait)) if wait > 0 else None

    def poll(self, principal: Principal, if_none_match: bytes | None) -> Answer | None:
        """304 or the envelope from memory; None when the route must answer (load first, or 404)."""
        rollouts = self.ctx.policies.peek()
        if rollouts is None:
            return None
        tag = if_none_match.decode("latin-1") if if_none_match is not None else None
        result = answer_poll(principal.host_id, rollouts, tag)
        if result is None:
            return None
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in result.headers.items()]
        if result.status == 200:  # as starlette's Response adds them; a 304 has neither
            headers.append((b"content-length", str(len(result.body)).encode()))
            headers.append((b"content-type", b"application/json"))
        return Answer(result.status, headers, result.body)

    def beat(self, principal: Principal, body: bytes, content_type: bytes | None) -> Answer | None:
        """200 once a valid heartbeat is held for the write-behind; None: the route says why not."""
        if not is_json(content_type):
            return None
        try:
            beat = Heartbeat.model_validate_json(body)
        except ValidationError:
            return None  # the route says why, in its own words
        self.ctx.activity.heartbeat(principal.host_id, beat, self.ctx.now())
        return _OK

    def late(self) -> Answer:
        timeout = self.ctx.config.body_timeout
        return Answer.of(error_response(408, f"request body not received within {timeout:g} s"))

    @staticmethod
    def failed(exc: Exception) -> Answer:
        """Answered as the framework's last handler does (server_stub/app.py)."""
        log.error("unhandled error", exc_info=exc)
        return Answer.of(error_response(500, "internal server error"))

    # -- in ASGI -------------------------------------------------------------------------------

    async def _node_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        poll = method == "GET" and path == self.poll_path
        if not poll and not (method == "POST" and path == self.beat_path):
            await self._onward(scope, receive, send)
            return
        head = NodeHead.read(scope["headers"])
        principal = self.node(head)
        if principal is None or (not poll and not self.readable(head)):
            await self._onward(scope, receive, send)  # the body layer answers (or reads) it
            return
        if not await self.admitted(scope, send, principal):
            return
        try:
            if poll:
                onward = await self._poll(scope, receive, send, principal, head)
            else:
                onward = await self._heartbeat(scope, receive, send, principal, head)
        except Exception as exc:
            await self.send(scope, send, self.failed(exc))
            return
        if onward is not None:
            await self._onward(scope, onward, send)

    async def admitted(self, scope: Scope, send: Send, principal: Principal) -> bool:
        """An identified node's request admitted (its rate limit), the scope marked so that no
        later layer counts it again; False once refused and answered (also for the layer a node's
        upload is handed to: server_stub/ingestserve.py)."""
        refused = self.admit(principal)
        if refused is not None:
            await self.send(scope, send, refused)
            return False
        scope.setdefault("state", {})["principal"] = principal
        return True

    async def _poll(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, head: NodeHead
    ) -> Receive | None:
        """None once answered; else the route answers (with what to read the request from)."""
        answer = self.poll(principal, head.if_none_match)
        if answer is None:  # to be loaded first (a worker thread), or 404: the route answers
            return receive
        await self.send(scope, send, answer)
        return None

    async def _heartbeat(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, head: NodeHead
    ) -> Receive | None:
        try:
            async with asyncio.timeout(self.ctx.config.body_timeout):
                message = await receive()
        except TimeoutError:
            await self.send(scope, send, self.late())
            return None
        if message["type"] == "http.disconnect":
            return None  # nobody to answer (as the body layer does)
        answer = None
        if not message.get("more_body", False):
            answer = self.beat(principal, message.get("body", b""), head.content_type)
        if answer is None:
            return replay(message, receive)
        await self.send(scope, send, answer)
        return None

    async def send(self, scope: Scope, send: Send, answer: Answer) -> None:
        """Writes `answer`, counted (also for the layer a node's upload is handed to:
        server_stub/ingestserve.py)."""
        self.ctx.metrics.answered(scope["method"], answer.status)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body})


def _admitted(scope: Scope) -> bool:
    """Identified and admitted already, by the HTTP protocol (server_stub/nodeprotocol.py)."""
    state = scope.get("state")
    return state is not None and state.get("principal") is not None
