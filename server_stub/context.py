"""What every request handler needs: configuration, store, authenticator, clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from server_stub.auth import Authenticator
from server_stub.config import ServerConfig
from server_stub.limits import Limits
from server_stub.metrics import Metrics
from server_stub.store import Store


@dataclass(frozen=True)
class ServerContext:
    config: ServerConfig
    store: Store
    auth: Authenticator
    metrics: Metrics
    limits: Limits | None = None  # the rate limits (server_stub/limits.py); set by create_app

    def now(self) -> datetime:
        return self.config.clock()


def get_context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(get_context)]
