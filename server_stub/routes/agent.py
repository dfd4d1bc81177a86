"""What agents call: enroll, fetch the policy, upload events, heartbeat.

After enrolment a host is known only by its node key; no request body can claim another host.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError

from endpoint_contract.events import EventsAck
from endpoint_contract.heartbeat import Heartbeat
from server_stub.auth import Enroller, Node
from server_stub.batch import BatchInvalid, BatchUnreadable, parse_batch
from server_stub.context import Ctx
from server_stub.enrollserve import enroll_host
from server_stub.errors import BadRequest, NotFound, PayloadTooLarge
from server_stub.ingest import BATCH_SCHEMA
from server_stub.ingestserve import store_uploaded
from server_stub.models import EnrollRequest, EnrollResponse, Ok
from server_stub.policyserve import answer_poll

router = APIRouter(tags=["agent"])
log = logging.getLogger(__name__)


@router.post("/enroll", response_model=EnrollResponse)
async def enroll(
    body: EnrollRequest,
    principal: Enroller,
    ctx: Ctx,
) -> EnrollResponse:
    """Exchange the fleet's enroll secret (or an enroll token) for this host's own node key.

    The first enrollment binds the machine id; enrolling it again (rotating the key) needs the
    host's current node key in the body, or an admin's reset (`POST /hosts/{host}/reset`).
    """
    return await enroll_host(ctx, principal, body)  # most are answered before (server_stub/enrollserve.py)


@router.get(
    "/policy",
    responses={
        200: {"description": "the signed envelope (JSON)", "content": {"application/json": {}}},
        304: {"description": "If-None-Match matched the current ETag"},
        404: {"description": "no policy is published for this host"},
    },
)
def get_policy(
    request: Request,
    principal: Node,
    ctx: Ctx,
) -> Response:
    """The envelope this host should run (rollout-aware), with a strong ETag.

    A node's poll is normally answered before this route, from memory (server_stub/policyserve.py);
    this answers the same when the in-memory copy had to be loaded first.
    """
    result = answer_poll(principal.host_id, ctx.policies.current(), request.headers.get("if-none-match"))
    if result is None:
        raise NotFound("no policy is published for this host yet")
    if result.status == 304:
        return Response(status_code=304, headers=result.headers)
    return Response(result.body, media_type="application/json", headers=result.headers)


async def _body(request: Request) -> bytes:
    # Read here, decoded in the handler (once, by server_stub/batch.py), not by FastAPI.
    return await request.body()


@router.post(
    "/events",
    response_model=EventsAck,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": BATCH_SCHEMA}}}
    },
)
def post_events(
    body: Annotated[bytes, Depends(_body)],
    principal: Node,
    ctx: Ctx,
) -> EventsAck:
    """Store a batch (all or nothing); ids stored before are acknowledged again, not duplicated.

    The body is an `EventBatch` (endpoint_contract/events.py); each event is stored as the JSON
    text it was validated from, with the host's identity as the server knows it.
    """
    try:
        received = parse_batch(body)
    except BatchInvalid as exc:
        raise RequestValidationError(exc.errors) from None
    except BatchUnreadable as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    if len(received) > ctx.config.max_events:
        raise PayloadTooLarge(f"at most {ctx.config.max_events} events per batch, got {len(received)}")
    return EventsAck(acked=store_uploaded(ctx, principal, received))


@router.post("/heartbeat", response_model=Ok)
async def heartbeat(
    body: Heartbeat,
    principal: Node,
    ctx: Ctx,
) -> Ok:
    """Stored behind, in a batch with others within a few seconds (server_stub/writebehind.py)."""
    ctx.activity.heartbeat(principal.host_id, body, ctx.now())
    return Ok()
