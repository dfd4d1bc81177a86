"""Who is calling: admin, reader, enroller (shared enroll secret) or one host (its node key).

Enroll tokens (`endpoint-admin enroll-token create`) are stored and looked up the same way and
admit the enroll role while they have uses left and have not expired.
Node keys are answered from memory after their first lookup (server_stub/keycache.py), and a
host's contact time is noted for a batched write (server_stub/writebehind.py).
Static secrets are compared in constant time, every one of them on every request. Node keys
are stored as sha256 digests and looked up by digest, so the database never holds a usable
key and the lookup leaks nothing about the key. Missing or unknown credentials: 401; a valid
credential of the wrong role: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from server_stub.config import ServerConfig
from server_stub.errors import Forbidden, Unauthorized
from server_stub.keycache import NodeKeyCache
from server_stub.store import NodeIdentity, Store


class Role(StrEnum):
    ADMIN = "admin"
    READER = "reader"
    ENROLL = "enroll"
    NODE = "node"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    host: NodeIdentity | None = None  # set for Role.NODE
    enroll_token: str | None = None  # the digest of a per-rollout enroll token (Role.ENROLL)

    @property
    def host_id(self) -> str:
        if self.host is None:
            raise Forbidden("this endpoint needs a node key")
        return self.host.host_id

    @property
    def limit_key(self) -> str:
        """Whom a rate limit counts: the role, and for a node key its host (never the raw header)."""
        return f"{self.role.value}:{self.host.host_id}" if self.host is not None else self.role.value


def new_node_key() -> str:
    return secrets.token_urlsafe(32)


def hash_node_key(node_key: str) -> str:
    return hashlib.sha256(node_key.encode("utf-8")).hexdigest()


class Authenticator:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        keys: NodeKeyCache | None = None,
        seen: Callable[[str, datetime], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = config.clock
        self._keys = keys if keys is not None else NodeKeyCache()
        self._seen = seen if seen is not None else self._touch_now
        self._secrets: list[tuple[Role, bytes]] = [
            (role, value.encode("utf-8"))
            for role, value in (
                (Role.ADMIN, config.admin_token),
                (Role.READER, config.reader_token),
                (Role.ENROLL, config.enroll_secret),
            )
            if value
        ]

    @property
    def keys(self) -> NodeKeyCache:
        return self._keys

    def identify_static(self, token: str) -> Principal | None:
        """The admin, reader or enroll role of a static secret; no database involved."""
        presented = token.encode("utf-8", "replace")
        # Compare against every secret (no early exit) so timing does not tell which one came close.
        matches = [role for role, secret in self._secrets if hmac.compare_digest(presented, secret)]
        return Principal(matches[0]) if matches else None

    def identify_from_memory(self, token: str) -> tuple[bool, Principal | None]:
        """(decided, principal) without touching the database: static secrets and cached node keys.

        Not decided: the key must be looked up (`identify`, from a worker thread).
        """
        static = self.identify_static(token)
        if static is not None:
            return True, static
        known, host = self._keys.get(hash_node_key(token))
        if host is None:
            return known, None
        self.seen(host.host_id)
        return True, Principal(Role.NODE, host)

    def seen(self, host_id: str) -> None:
        """The host called now, with a node key known in memory (noted for the batched write)."""
        self._seen(host_id, self._clock())

    def identify(self, token: str) -> Principal | None:
        decided, principal = self.identify_from_memory(token)
        if decided:
            return principal
        digest = hash_node_key(token)
        epoch = self._keys.epoch  # read before the query: an invalidation meanwhile wins
        host = self._store.hosts.by_key(digest)
        if host is not None:
            self._keys.put(digest, host, epoch)
            self._seen(host.host_id, self._clock())
            return Principal(Role.NODE, host)
        if self._store.enroll_tokens.usable(digest, self._clock()):
            return Principal(Role.ENROLL, enroll_token=digest)
        self._keys.put(digest, None, epoch)
        return None

    def _touch_now(self, host_id: str, at: datetime) -> None:
        self._store.hosts.touch_many({host_id: at})


_bearer = HTTPBearer(auto_error=False, description="admin token, reader token, enroll secret or node key")


def requires(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency admitting only these roles."""
    allowed = frozenset(roles)
    names = " or ".join(sorted(r.value for r in allowed))

    # async: answered in the event loop, no worker thread for the common case.
    async def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        # Normally identified already, before the body was read (server_stub/middleware.py).
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            if credentials is None or not credentials.credentials:
                raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
            authenticator: Authenticator = request.app.state.ctx.auth
            principal = await run_in_threadpool(authenticator.identify, credentials.credentials)
        if principal is None:
            raise Unauthorized("invalid credentials")
        if principal.role not in allowed:
            raise Forbidden(f"{principal.role.value} credentials may not use this endpoint (needs {names})")
        return principal

    return dependency


# Route parameters: `principal: AdminOnly` admits the admin token only, and so on.
AdminOnly = Annotated[Principal, Depends(requires(Role.ADMIN))]
Reader = Annotated[Principal, Depends(requires(Role.READER, Role.ADMIN))]
Enroller = Annotated[Principal, Depends(requires(Role.ENROLL))]
Node = Annotated[Principal, Depends(requires(Role.NODE))]
