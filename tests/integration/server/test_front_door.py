"""The first layer (server_stub/frontdoor.py) answers a node's poll and heartbeat exactly as the
routes do, against the real app under uvicorn on 127.0.0.1 -- in ASGI under uvicorn's own HTTP
protocol, and in the parser's callbacks under serve's (server_stub/nodeprotocol.py).

Each request is sent twice to the same server: once through the first layer, once with it
switched off (every request then takes the framework's middleware and routes), and the two
answers must match -- status, body and headers (but Date) -- for a good poll, a stale or missing
ETag, no policy yet, a missing or unknown node key, another role's credential, heartbeats good
and malformed, an oversized or chunked body, and a rate-limited host. What a heartbeat stores
must be the same value too, and every answer is counted in the request metrics either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_stub.frontdoor import FrontDoor
from tests.support.inprocess_server import InProcessServer, in_process_server


@pytest.fixture(params=[False, True], ids=["asgi", "protocol"])
def listener(request: pytest.FixtureRequest) -> bool:
    """True: serve's protocol factory (the node protocol); False: uvicorn's own protocol."""
    return bool(request.param)


@pytest.fixture
def server(tmp_path: Path, listener: bool) -> Iterator[InProcessServer]:
    with in_process_server(tmp_path, listener=listener) as live:
        yield live


def _front(server: InProcessServer) -> FrontDoor:
    front: FrontDoor = server.app.front_door
    return front


def _answer(r: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    return r.status_code, r.content, [(k, v) for k, v in r.headers.multi_items() if k != "date"]


def _both(server: InProcessServer, send: Any) -> tuple[Any, Any]:
    """(through the first layer, through the framework alone): what `send(client)` got each time."""
    front = _front(server)
    answers = []
    for fast in (True, False):
        front.fast = fast
        try:
            answers.append(send())
        finally:
            front.fast = True
    return answers[0], answers[1]


def _same(server: InProcessServer, token: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
    def send() -> httpx.Response:
        with server.client(token) as c:
            return c.request(method, path, **kw)

    fast, full = _both(server, send)
    assert _answer(fast) == _answer(full)
    return fast  # type: ignore[no-any-return]


def _requests_total(server: InProcessServer) -> dict[tuple[str, str], float]:
    with server.client(server.config.reader_token) as c:
        text = c.get(server.base_url + "/metrics").text
    return {
        (s.labels["method"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "endpoint_server_requests_total"
    }


def test_polls_answer_as_the_route(server: InProcessServer) -> None:
    host = server.enroll("ws-1")
    key = host["node_key"]
    assert _same(server, key, "GET", "/policy").status_code == 404  # nothing published yet
    server.publish(1)
    full = _same(server, key, "GET", "/policy")  # no ETag: the envelope
    assert full.status_code == 200 and full.headers["etag"]
    etag = full.headers["etag"]
    assert _same(server, key, "GET", "/policy", headers={"If-None-Match": etag}).status_code == 304
    assert (
        _same(server, key, "GET", "/policy", headers={"If-None-Match": f'W/{etag}, "x"'}).status_code == 304
    )
    assert _same(server, key, "GET", "/policy", headers={"If-None-Match": '"stale"'}).status_code == 200
    server.publish(2)
    stale = _same(server, key, "GET", "/policy", headers={"If-None-Match": etag})
    assert stale.status_code == 200 and stale.headers["etag"] != etag
    # Who may not poll: answered by the framework either way, the same.
    assert _same(server, None, "GET", "/policy").status_code == 401
    assert _same(server, "not-a-key", "GET", "/policy").status_code == 401
    assert _same(server, None, "GET", "/policy", headers={"Authorization": "Basic eDp5"}).status_code == 401
    assert _same(server, server.config.admin_token, "GET", "/policy").status_code == 403
    assert _same(server, key, "HEAD", "/policy").status_code == 405


FULL_BEAT = {
    "agent_version": "1.2",
    "policy_version": 4,
    "mode": "monitor",
    "last_scan_at": "2026-01-02T03:04:05Z",
    "counters": {"queue_pending": 5},
    "circuit_state": "open",
    "mode_reason": "break-glass",
    "newer": [1],
}
HEARTBEATS: list[tuple[str, bytes, dict[str, str]]] = [
    ("good", b'{"agent_version": "1.2", "mode": "enforce", "counters": {"scans": 3}}', {}),
    ("full", json.dumps(FULL_BEAT).encode(), {}),
    ("no content type", b'{"agent_version": "1"}', {"content-type": ""}),
    ("json; charset", b'{"agent_version": "1"}', {"content-type": "application/json; charset=utf-8"}),
    ("text/plain", b'{"agent_version": "1"}', {"content-type": "text/plain"}),
    ("+json", b'{"agent_version": "1"}', {"content-type": "application/vnd.x+json"}),
    ("empty", b"", {}),
    ("not json", b"{agent_version", {}),
    ("a list", b'[{"agent_version": "1"}]', {}),
    ("missing version", b'{"mode": "enforce"}', {}),
    ("wrong type", b'{"agent_version": "1", "policy_version": "x"}', {}),
    ("numeric text", b'{"agent_version": "1", "policy_version": "7"}', {}),
    ("whole float", b'{"agent_version": "1", "policy_version": 7.0}', {}),
    ("true as int", b'{"agent_version": "1", "policy_version": true}', {}),
    ("negative", b'{"agent_version": "1", "counters": {"scans": -1}}', {}),
    ("bad counter name", b'{"agent_version": "1", "counters": {"a b": 1}}', {}),
    ("NUL", b'{"agent_version": "1\\u0000"}', {}),
    ("lone surrogate", b'{"agent_version": "\\ud800"}', {}),
    ("NaN", b'{"agent_version": "1", "policy_version": NaN}', {}),
    ("huge int", b'{"agent_version": "1", "policy_version": 123456789012345678901234567890}', {}),
    ("duplicate keys", b'{"agent_version": "1", "agent_version": "2"}', {}),
    ("bad utf-8", b'{"agent_version": "\xff"}', {}),
    ("utf-8 BOM", b'\xef\xbb\xbf{"agent_version": "1"}', {}),
    ("trailing junk", b'{"agent_version": "1"} x', {}),
    ("deep", b'{"agent_version": "1", "x": ' + b"[" * 200 + b"]" * 200 + b"}", {}),
]


@pytest.mark.parametrize(("name", "body", "headers"), HEARTBEATS, ids=[h[0] for h in HEARTBEATS])
def test_heartbeats_answer_and_store_as_the_route(
    server: InProcessServer, name: str, body: bytes, headers: dict[str, str]
) -> None:
    host = server.enroll("ws-1")
    activity = server.app.state.ctx.activity
    sent = {"content-type": "application/json", **headers}
    if sent["content-type"] == "":
        del sent["content-type"]

    def send() -> tuple[httpx.Response, Any]:
        with server.client(host["node_key"]) as c:
            r = c.post("/heartbeat", content=body, headers=sent)
        with activity._lock:
            held = activity._beats.pop(host["host_id"], None)
        return r, held[0] if held else None

    (fast, fast_beat), (full, full_beat) = _both(server, send)
    assert _answer(fast) == _answer(full), name
    assert fast_beat == full_beat  # the same value stored (or nothing, for a refusal)
    assert (fast.status_code == 200) == (fast_beat is not None)


def test_bodies_the_first_layer_does_not_read_answer_as_before(server: InProcessServer) -> None:
    host = server.enroll("ws-1")
    key = host["node_key"]
    limit = server.config.max_body_bytes
    big = b'{"agent_version": "' + b"x" * limit + b'"}'
    assert _same(server, key, "POST", "/heartbeat", content=big).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b'{"agent_version": '
        yield b'"1"}'

    def chunked() -> httpx.Response:
        with server.client(key) as c:
            json_type = {"content-type": "application/json"}
            return c.post("/heartbeat", content=chunks(), headers=json_type)  # Transfer-Encoding: chunked

    fast, full = _both(server, chunked)
    assert fast.status_code == 200
    assert _answer(fast) == _answer(full)


def test_a_rate_limited_host_is_answered_as_before(tmp_path: Path, listener: bool) -> None:
    with in_process_server(tmp_path, listener=listener, rate_limit=0.001, rate_burst=3) as server:
        for fast in (True, False):
            host = server.enroll(f"ws-{fast}")
            _front(server).fast = fast
            with server.client(host["node_key"]) as c:
                statuses = [c.post("/heartbeat", json={"agent_version": "1"}).status_code for _ in range(4)]
                refused = c.get("/policy")
            _front(server).fast = True
            assert statuses == [200, 200, 200, 429] and refused.status_code == 429
            assert refused.headers["retry-after"] and refused.headers["connection"] == "close"
            assert refused.json() == {"error": "too many requests; retry later"}


def test_answers_of_the_first_layer_are_counted(server: InProcessServer) -> None:
    server.publish(1)
    host = server.enroll("ws-1")
    before = _requests_total(server)
    with server.client(host["node_key"]) as c:
        etag = c.get("/policy").headers["etag"]
        for _ in range(5):
            assert c.get("/policy", headers={"If-None-Match": etag}).status_code == 304
            assert c.post("/heartbeat", json={"agent_version": "1"}).status_code == 200
            assert c.post("/heartbeat", json={"mode": "x"}).status_code == 422
    after = _requests_total(server)

    def grew(key: tuple[str, str]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew(("GET", "304")) == 5
    assert grew(("POST", "200")) == 5 and grew(("POST", "422")) == 5


def test_past_the_in_flight_cap_a_node_is_answered_from_memory(server: InProcessServer) -> None:
    """A poll or heartbeat answered from memory takes no slot; what goes on to the framework
    (a key not known here, another path) is refused 503 + Retry-After, as before."""
    server.publish(1)
    host = server.enroll("ws-1")
    with server.client(host["node_key"]) as c:
        etag = c.get("/policy").headers["etag"]  # the policy copy in memory from now on
    admission = _front(server).admission
    admission.limit = 0
    try:
        with server.client(host["node_key"]) as c:
            polled = c.get("/policy", headers={"If-None-Match": etag})
            beat = c.post("/heartbeat", json={"agent_version": "1.2"})
            hosts = c.get("/hosts")
        with server.client("not-a-key") as c:
            unknown = c.get("/policy")
    finally:
        admission.limit = 10_000
    assert polled.status_code == 304 and beat.status_code == 200
    for refused in (hosts, unknown):
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert admission.in_flight == 0
