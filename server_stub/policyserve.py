"""GET /policy answered from memory: the route's logic, and a plain ASGI layer in front of it.

The layer sits after authentication and rate limiting (server_stub/middleware.py) and answers a
node's poll itself -- 304 when If-None-Match matches, else the envelope -- without the
framework's routing, dependencies and response classes, and without a database query. When the
in-memory copy must first be (re)loaded, or for anyone but a node, the request goes on to the
route (server_stub/routes/agent.py), which answers the same from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from server_stub.auth import Principal, Role
from server_stub.policycache import PolicyCache, served_for
from server_stub.store import Rollout


@dataclass(frozen=True, slots=True)
class PolicyAnswer:
    status: int  # 200 or 304; 404 is the route's (its error body)
    body: bytes
    headers: dict[str, str]


def etag_matches(if_none_match: str, etag: str) -> bool:
    candidates = [c.strip() for c in if_none_match.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


def answer_poll(host_id: str, rollouts: Sequence[Rollout], if_none_match: str | None) -> PolicyAnswer | None:
    """The answer to this host's poll; None when no published version includes it (404)."""
    served = served_for(host_id, rollouts)
    if served is None:
        return None
    headers = {"ETag": served.etag, "Cache-Control": "no-cache", "X-Policy-Version": str(served.version)}
    if if_none_match and etag_matches(if_none_match, served.etag):
        return PolicyAnswer(304, b"", headers)
    return PolicyAnswer(200, served.envelope, headers)


class PolicyFastPath:
    def __init__(self, app: ASGIApp, cache: PolicyCache, path: str) -> None:
        self.app, self.cache, self.path = app, cache, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "GET":
            principal: Principal | None = scope.get("state", {}).get("principal")
            rollouts = self.cache.peek()
            if principal is not None and principal.role is Role.NODE and rollouts is not None:
                result = answer_poll(principal.host_id, rollouts, _header(scope, b"if-none-match"))
                if result is not None:
                    await _send(send, result)
                    return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _send(send: Send, result: PolicyAnswer) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in result.headers.items()]
    if result.status == 200:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(result.body)).encode()))
    await send({"type": "http.response.start", "status": result.status, "headers": headers})
    await send({"type": "http.response.body", "body": result.body})
