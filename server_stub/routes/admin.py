"""What administrators call: publish a signed envelope, steer its rollout, roll back.

The server holds no private key: it only checks that a trusted key signed what it is given.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter

from endpoint_agent.errors import PolicySignatureError, PolicyValidationError
from endpoint_agent.policy import Policy
from endpoint_contract.envelope import canonical_json, verify_envelope
from server_stub.auth import AdminOnly, Reader
from server_stub.context import Ctx, ServerContext
from server_stub.errors import Unprocessable
from server_stub.models import (
    PolicyState,
    PolicyVersions,
    PublishRequest,
    PublishResponse,
    RollbackResponse,
    RolloutRequest,
)
from server_stub.store import NewPolicy, PolicyVersion, audit

router = APIRouter(tags=["admin"])


def _state(v: PolicyVersion) -> PolicyState:
    return PolicyState(
        version=v.version,
        rollout_percent=v.rollout_percent,
        policy_name=v.policy_name,
        fleet_id=v.fleet_id,
        key_id=v.key_id,
        etag=v.etag,
        published_at=v.published_at,
        rolled_back_at=v.rolled_back_at,
    )


_SIGNATURE_KEYS = ("key_id", "alg", "sig")


def _envelope_bytes(envelope: dict[str, Any] | str) -> bytes:
    """The envelope re-serialised canonically, with only the keys of the format.

    The signature covers the payload inside, not this outer object, so nothing unverified
    beyond the format's own keys is stored and served to agents.
    """
    if isinstance(envelope, str):
        try:
            envelope = json.loads(envelope)
        except ValueError:
            raise Unprocessable("envelope rejected: envelope is not JSON") from None
        if not isinstance(envelope, dict):
            raise Unprocessable("envelope rejected: envelope is not a JSON object")
    signatures = envelope.get("signatures")
    if isinstance(signatures, list):
        signatures = [
            {k: e[k] for k in _SIGNATURE_KEYS if k in e} if isinstance(e, dict) else e for e in signatures
        ]
    try:
        return canonical_json({"payload": envelope.get("payload"), "signatures": signatures})
    except ValueError:
        raise Unprocessable("envelope rejected: envelope is not strict JSON") from None


TOKEN_ACTOR = "admin token"  # how the audit log names automation using the admin token


def publish_envelope(
    ctx: ServerContext, envelope: dict[str, Any] | str, rollout_percent: int, actor: str
) -> tuple[PolicyVersion, int | None]:
    """Verify, store and audit a signed envelope (the API and the console's upload)."""
    data = _envelope_bytes(envelope)
    try:
        verified = verify_envelope(data, ctx.config.public_keys, Policy)
    except (PolicySignatureError, PolicyValidationError) as exc:
        raise Unprocessable(f"envelope rejected: {exc}") from None
    now = ctx.now()
    if verified.is_expired(now):
        raise Unprocessable(f"envelope rejected: it expired at {verified.signed.expires_at}")
    new = NewPolicy(
        version=verified.version,
        envelope=data.decode("utf-8"),
        etag='"' + hashlib.sha256(data).hexdigest() + '"',
        key_id=verified.key_id,
        policy_name=verified.policy.name,
        fleet_id=verified.fleet_id,
        rollout_percent=rollout_percent,
    )
    stored, previous = ctx.store.policies.publish(new, now)
    ctx.store.audit.record(
        now,
        actor,
        "admin",
        audit.PUBLISH,
        f"policy version {stored.version}",
        f"{stored.policy_name!r} fleet {stored.fleet_id!r}, key {stored.key_id}, rollout {rollout_percent}%",
    )
    return stored, previous


def set_rollout_percent(ctx: ServerContext, percent: int, actor: str) -> PolicyVersion:
    state = ctx.store.policies.set_rollout(percent)
    ctx.store.audit.record(
        ctx.now(), actor, "admin", audit.ROLLOUT, f"policy version {state.version}", f"rollout {percent}%"
    )
    return state


@router.put("/policy", response_model=PublishResponse)
def publish_policy(
    body: PublishRequest,
    _: AdminOnly,
    ctx: Ctx,
) -> PublishResponse:
    """Publish a signed envelope; its version must be higher than every version published before."""
    stored, previous = publish_envelope(ctx, body.envelope, body.rollout_percent, TOKEN_ACTOR)
    return PublishResponse(**_state(stored).model_dump(), previous_version=previous)


@router.post("/policy/rollout", response_model=PolicyState)
def set_rollout(
    body: RolloutRequest,
    _: AdminOnly,
    ctx: Ctx,
) -> PolicyState:
    """Raise or lower the share of hosts that get the newest version (the others keep the previous)."""
    return _state(set_rollout_percent(ctx, body.percent, TOKEN_ACTOR))


@router.post("/policy/rollback", response_model=RollbackResponse)
def rollback(
    _: AdminOnly,
    ctx: Ctx,
) -> RollbackResponse:
    """Withdraw the newest version; the previous one becomes current for every host.

    Agents never activate an older version than they run, so hosts that already took the
    withdrawn version keep it until a higher version is published.
    """
    withdrawn, current = ctx.store.policies.rollback(ctx.now())
    ctx.store.audit.record(
        ctx.now(),
        TOKEN_ACTOR,
        "admin",
        audit.ROLLBACK,
        f"policy version {withdrawn}",
        f"version {current.version} current for every host",
    )
    return RollbackResponse(**_state(current).model_dump(), rolled_back_version=withdrawn)


@router.get("/policy/versions", response_model=PolicyVersions)
def policy_versions(
    _: Reader,
    ctx: Ctx,
) -> PolicyVersions:
    """Every published version, newest first, with its rollout and whether it was rolled back."""
    return PolicyVersions(items=[_state(v) for v in ctx.store.policies.versions()])
