"""What administrators call to steer enrollment: per-rollout enroll tokens, and host resets.

Both are audited (`GET /audit`). A token is shown once, at creation; the server keeps its digest.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from server_stub.auth import AdminOnly, hash_node_key, new_node_key
from server_stub.context import Ctx
from server_stub.errors import NotFound
from server_stub.models import EnrollTokenOut, EnrollTokenRequest, HostResetOut
from server_stub.routes.admin import TOKEN_ACTOR
from server_stub.store import audit

router = APIRouter(tags=["admin"])


@router.post("/enroll-tokens", response_model=EnrollTokenOut)
def create_enroll_token(body: EnrollTokenRequest, _: AdminOnly, ctx: Ctx) -> EnrollTokenOut:
    """A token that `POST /enroll` accepts besides the fleet secret, `uses` times until it expires."""
    token = "enr-" + new_node_key()
    now = ctx.now()
    expires_at = now + timedelta(seconds=body.expires_in)
    digest = hash_node_key(token)
    ctx.store.enroll_tokens.create(digest, expires_at=expires_at, max_uses=body.uses, by=TOKEN_ACTOR, now=now)
    detail = f"{body.uses} uses, expires {expires_at.isoformat()}"
    ctx.store.audit.record(
        now, TOKEN_ACTOR, "admin", audit.ENROLL_TOKEN_CREATE, f"token {digest[:12]}", detail
    )
    return EnrollTokenOut(token=token, expires_at=expires_at, uses=body.uses)


@router.post("/hosts/{host}/reset", response_model=HostResetOut)
def reset_host(host: str, _: AdminOnly, ctx: Ctx) -> HostResetOut:
    """Let this host (id or name) enroll once more with the fleet secret; its node key stops working."""
    record = ctx.store.hosts.reset(host, ctx.now())
    if record is None:
        raise NotFound(f"no host {host!r}")
    ctx.store.audit.record(
        ctx.now(), TOKEN_ACTOR, "admin", audit.HOST_RESET, f"host {record.host_id}", record.hostname
    )
    return HostResetOut(host_id=record.host_id, hostname=record.hostname)
