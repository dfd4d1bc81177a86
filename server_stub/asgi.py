"""Small helpers shared by the plain ASGI layers that answer a hot request before the framework
(server_stub/frontdoor.py, enrollserve.py, ingestserve.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from server_stub.auth import Principal, Role

JSON = "application/json"


def posted_by(scope: Scope, path: str, role: Role) -> Principal | None:
    """The caller when this is a POST to `path` by an authenticated `role` (AuthGate put it in
    the scope), else None: the request goes on to the framework untouched."""
    if scope["type"] != "http" or scope["path"] != path or scope["method"] != "POST":
        return None
    principal: Principal | None = scope.get("state", {}).get("principal")
    return principal if principal is not None and principal.role is role else None


def is_json(content_type: bytes | None) -> bool:
    """What FastAPI decodes as JSON for certain: no Content-Type, or application/json."""
    if content_type is None:
        return True
    return content_type.split(b";", 1)[0].strip().lower() == JSON.encode()


def replay(first: Message, receive: Receive) -> Receive:
    """`receive` for the next layer: the message already read here, then the rest."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()

    return again


async def handled(scope: Scope, exc: Exception) -> Response:
    """The application's own answer to `exc` (its exception handlers), as the route would give."""
    handlers = scope["app"].exception_handlers
    handler = next(handlers[cls] for cls in type(exc).__mro__ if cls in handlers)
    response: Response = await handler(Request(scope), exc)
    return response
