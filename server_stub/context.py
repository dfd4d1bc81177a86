"""What every request handler needs: configuration, store, authenticator, clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from server_stub.auth import Authenticator
from server_stub.config import ServerConfig
from server_stub.enrollbatch import EnrollBatcher
from server_stub.ingestgroup import UploadGroups
from server_stub.limits import Limits
from server_stub.metrics import Metrics
from server_stub.policycache import PolicyCache
from server_stub.store import Store
from server_stub.writebehind import HostActivity


@dataclass(frozen=True)
class ServerContext:
    config: ServerConfig
    store: Store
    auth: Authenticator
    metrics: Metrics
    policies: PolicyCache  # the served versions, in memory (server_stub/policycache.py)
    activity: HostActivity  # last_seen and heartbeats, written behind (server_stub/writebehind.py)
    limits: Limits | None = None  # the rate limits (server_stub/limits.py); set by create_app
    enrollments: EnrollBatcher | None = None  # group commit (server_stub/enrollbatch.py); set by create_app
    # Uploads stored in groups (server_stub/ingestgroup.py): PostgreSQL; None = each on its own.
    uploads: UploadGroups | None = None

    def now(self) -> datetime:
        return self.config.clock()


def get_context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def _context(request: Request) -> ServerContext:
    # A coroutine: FastAPI runs a plain-function dependency in a worker thread, one hop per request.
    return get_context(request)


Ctx = Annotated[ServerContext, Depends(_context)]
