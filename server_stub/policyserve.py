"""GET /policy answered from memory: what a host's poll gets, for the route and the first layer.

A node's poll is answered by the first layer (server_stub/frontdoor.py) -- 304 when
If-None-Match matches, else the envelope -- without a database query. When the in-memory copy
must first be (re)loaded, or for anyone but a node, the route (server_stub/routes/agent.py)
answers the same from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server_stub.policycache import served_for
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
