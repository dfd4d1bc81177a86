"""POST /enroll: the route's logic, and the two ways in front of the route that answer most calls.

An enrollment is answered, with the same logic and the same bytes, by the first of:

- the HTTP protocol (server_stub/nodeprotocol.py), in the parser's callbacks: a request with the
  fleet's enroll secret and a Content-Length body is identified, rate limited and validated by
  EnrollDoor's decisions below, queued for the group commit (server_stub/enrollbatch.py), and
  its answer written when the group is settled -- no ASGI task, middleware or message;
- EnrollFastPath, a plain ASGI layer after authentication, the rate limits and the body read
  (server_stub/middleware.py): when uvicorn runs another protocol, or for an enroll token;
- the route (server_stub/routes/agent.py), for anything else: another content type, a body that
  does not validate (its 422 says why), no enroll credential.

Each of them validates the body as the framework would (json.loads, then EnrollRequest), and
answers errors as the application's own handlers do (server_stub/middleware.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from endpoint_agent.errors import StoreError
from server_stub.asgi import handled, is_json, posted_by, replay
from server_stub.auth import Principal, Role, hash_node_key, new_node_key
from server_stub.context import ServerContext
from server_stub.enrollbatch import EnrollmentsBusy
from server_stub.errors import ApiError, Conflict, ServiceUnavailable, Unauthorized
from server_stub.frontdoor import Answer, FrontDoor
from server_stub.middleware import (
    address_key,
    api_error_response,
    bearer_token,
    store_error_response,
    too_many,
)
from server_stub.models import EnrollRequest, EnrollResponse
from server_stub.store import EnrollRefused
from server_stub.store.hosts import Enrollment

BUSY_RETRY_AFTER = 2  # seconds, as the admission control answers (server_stub/admission.py)
# Where the HTTP protocol finds the EnrollDoor: a key of the app's lifespan state (server_stub/app.py).
ENROLL_DOOR_STATE = "endpoint.enroll"
_PLAIN = re.compile(r"[A-Za-z0-9_.-]*")  # a uuid, a urlsafe token: JSON text as they are
FLEET_SECRET = "fleet-secret"  # the enroll-credential bucket of the shared secret (server_stub/limits.py)


async def enroll_host(ctx: ServerContext, principal: Principal, body: EnrollRequest) -> EnrollResponse:
    """Exchange the enroll secret (or an enroll token) for this host's own node key."""
    admit_host(ctx, body)
    if principal.enroll_token is not None and not await run_in_threadpool(
        ctx.store.enroll_tokens.use, principal.enroll_token, ctx.now()
    ):
        raise Unauthorized("enroll token expired or used up")
    item, node_key = new_enrollment(body)
    try:
        if ctx.enrollments is not None:  # written with the others arriving now (server_stub/enrollbatch.py)
            host_id = await ctx.enrollments.enroll(item)
        else:
            host_id = await run_in_threadpool(_enroll_alone, ctx, item)
    except (EnrollRefused, EnrollmentsBusy) as exc:
        raise refusal(exc) from None
    return EnrollResponse(host_id=host_id, node_key=node_key)


def admit_host(ctx: ServerContext, body: EnrollRequest) -> None:
    """Each host its own bucket (server_stub/limits.py): TooManyRequests when it is dry."""
    if ctx.limits is not None:
        ctx.limits.admit_enrolling_host(body.machine_id)


def new_enrollment(body: EnrollRequest) -> tuple[Enrollment, str]:
    """What to write for this request, and the new node key (the host's only copy: answered once)."""
    node_key = new_node_key()
    item = Enrollment(
        machine_id=body.machine_id,
        hostname=body.hostname,
        node_key_hash=hash_node_key(node_key),
        current_key_hash=hash_node_key(body.node_key) if body.node_key else None,
    )
    return item, node_key


def refusal(exc: EnrollRefused | EnrollmentsBusy) -> ApiError:
    if isinstance(exc, EnrollRefused):
        return Conflict(
            "this machine_id is already enrolled: re-enrolling needs the host's current node_key "
            "or an admin's reset (endpoint-admin hosts reset HOST)"
        )
    return ServiceUnavailable(
        f"cannot enroll now ({exc}); retry later", headers={"Retry-After": str(BUSY_RETRY_AFTER)}
    )


def enrolled(host_id: str, node_key: str) -> Answer:
    """The 200, as FastAPI writes an EnrollResponse (compact JSON)."""
    if _PLAIN.fullmatch(host_id) and _PLAIN.fullmatch(node_key):  # as always: nothing to escape
        body = b'{"host_id":"%s","node_key":"%s"}' % (host_id.encode(), node_key.encode())
    else:
        body = json.dumps(
            {"host_id": host_id, "node_key": node_key}, ensure_ascii=False, separators=(",", ":")
        ).encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    return Answer(200, headers, body)


def error_answer(exc: Exception) -> Answer:
    """What the application's handlers answer to `exc` (server_stub/app.py)."""
    if isinstance(exc, ApiError):
        return Answer.of(api_error_response(exc))
    if isinstance(exc, StoreError):
        return Answer.of(store_error_response(exc))
    return FrontDoor.failed(exc)


def _enroll_alone(ctx: ServerContext, item: Enrollment) -> str:
    return ctx.store.hosts.enroll(
        machine_id=item.machine_id,
        hostname=item.hostname,
        node_key_hash=item.node_key_hash,
        now=ctx.now(),
        current_key_hash=item.current_key_hash,
    )


def parse_enroll_body(content_type: bytes | None, body: bytes) -> EnrollRequest | None:
    """The request as the framework validates it; None for anything the route must answer.

    Parsed by pydantic itself, which takes less than json.loads takes (UTF-8 only, strict JSON):
    whatever it refuses and json.loads would read (a byte order mark, UTF-16) goes to the route.
    """
    if not is_json(content_type):
        return None
    try:
        return EnrollRequest.model_validate_json(body)
    except ValidationError:
        return None


# -- in the HTTP protocol ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolling:
    """An enrollment queued for its group: the outcome to come, and the key to answer with."""

    outcome: asyncio.Future[str | Exception]
    node_key: str


class EnrollDoor:
    """The decisions of an enrollment taken by the HTTP protocol: each a plain function giving an
    Answer, or None when the request must go on to the application (which answers it as before)."""

    def __init__(self, ctx: ServerContext, path: str) -> None:
        self.ctx = ctx
        self.url = path.encode("ascii")

    def enroller(self, authorization: bytes | None) -> Principal | None:
        """The fleet's enroll secret (compared in memory); anything else is the application's:
        an enroll token is looked up in the database, a failed attempt is counted by address."""
        if authorization is None or self.ctx.enrollments is None:
            return None
        token = bearer_token(authorization.decode("latin-1"))
        principal = self.ctx.auth.identify_static(token) if token is not None else None
        return principal if principal is not None and principal.role is Role.ENROLL else None

    def admit(self, principal: Principal, client: tuple[str, int] | None) -> Answer | None:
        """The enroll credential's and the address's buckets, as the authentication layer takes
        them: None when a token was taken from both, else the 429 (and nothing taken)."""
        if self.ctx.limits is None:
            return None
        credential = principal.enroll_token or FLEET_SECRET
        wait = self.ctx.limits.admit_enrollment(credential, address_key(client))
        return Answer.of(too_many(wait)) if wait > 0 else None

    def start(self, body: bytes, content_type: bytes | None) -> Enrolling | Answer | None:
        """Validated, this host's bucket taken and queued for the group commit; an Answer when
        refused before that; None when the route must say why (a body that does not validate)."""
        request = parse_enroll_body(content_type, body)
        if request is None:
            return None
        assert self.ctx.enrollments is not None  # enroller() admits no one without it
        try:
            admit_host(self.ctx, request)
            item, node_key = new_enrollment(request)
            return Enrolling(self.ctx.enrollments.submit_soon(item), node_key)
        except EnrollmentsBusy as exc:
            return error_answer(refusal(exc))
        except ApiError as exc:
            return error_answer(exc)

    @staticmethod
    def settled(enrolling: Enrolling) -> Answer:
        """The answer once the group was written (or failed)."""
        try:
            outcome = enrolling.outcome.result()
        except Exception as exc:  # the group's error (or busy: the server stopped first)
            outcome = exc
        if isinstance(outcome, (EnrollRefused, EnrollmentsBusy)):
            return error_answer(refusal(outcome))
        if isinstance(outcome, Exception):
            return error_answer(outcome)
        return enrolled(outcome, enrolling.node_key)


# -- in ASGI -------------------------------------------------------------------------------------


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
        request = None if message.get("more_body") else parse_enroll_body(_content_type(scope), body)
        if request is None:
            await self.app(scope, replay(message, receive), send)
            return
        ctx: ServerContext = scope["app"].state.ctx
        try:
            answer = await enroll_host(ctx, principal, request)
        except (ApiError, StoreError) as exc:  # answered by the application's own handlers
            response: Response = await handled(scope, exc)
            await response(scope, receive, send)
            return
        done = enrolled(answer.host_id, answer.node_key)
        await send({"type": "http.response.start", "status": done.status, "headers": done.headers})
        await send({"type": "http.response.body", "body": done.body})


def _content_type(scope: Scope) -> bytes | None:
    return next((value for name, value in scope["headers"] if name == b"content-type"), None)
