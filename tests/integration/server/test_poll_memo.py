"""A poll read again, byte for byte, is answered without the parser (server_stub/nodeprotocol.py
PollMemo), against the real app under uvicorn on 127.0.0.1, over raw sockets.

- a whole poll answered 304, read again on that connection or another, is answered the same
  (the bytes with the protocol's answers off, but Date) without a request begun in the parser,
  and still counted, noted as the host's contact, rate-limited;
- what is not exactly one whole request read at once, between requests, goes through the parser
  and gets what the app gives: a poll split across reads, pipelined, followed by part of another,
  sent as the body of a heartbeat (never taken for a request), longer than is remembered; a poll
  with duplicate headers is the request the parser made of it;
- what a remembered poll rests on is taken again: a key changed (re-enrolled: 401), a new policy
  (200 with it), a flood (503), the rate limit (429), memory not trusted (the route answers);
- the memo is bounded by the memory it holds.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_stub import nodeprotocol
from server_stub.nodeprotocol import MEMO_BYTES, NodeProtocol, PollMemo
from tests.integration.server.test_node_protocol import (
    GOOD,
    _beat,
    _connect,
    _door,
    _exchange,
    _poll,
    _protocol_of,
    _Reader,
    _same_both_ways,
    _status,
    _wait_read,
    _without_date,
)
from tests.support.inprocess_server import InProcessServer, asgi_requests, in_process_server


class _Begun:
    """Requests begun in httptools' parser, by connection (for connections made from now)."""

    def __init__(self) -> None:
        self.by: Counter[NodeProtocol] = Counter()

    def total(self) -> int:
        return sum(self.by.values())

    def on(self, server: InProcessServer, sock: socket.socket) -> int:
        return self.by[_protocol_of(server, sock)]


@pytest.fixture
def begun(monkeypatch: pytest.MonkeyPatch) -> _Begun:
    count = _Begun()
    original = NodeProtocol.on_message_begin

    def counting(self: NodeProtocol) -> None:
        count.by[self] += 1
        original(self)

    monkeypatch.setattr(NodeProtocol, "on_message_begin", counting)
    return count


def _server(tmp_path: Path, **overrides: Any) -> Iterator[InProcessServer]:
    with in_process_server(tmp_path, listener=True, body_timeout=1.0, **overrides) as live:
        yield live


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    yield from _server(tmp_path)


def _enrolled(server: InProcessServer, name: str = "ws-1") -> dict[str, str]:
    host = server.enroll(name)
    with server.client(host["node_key"]) as c:
        host["etag"] = c.get("/policy").headers["etag"]
    return host


@pytest.fixture
def node(server: InProcessServer) -> dict[str, str]:
    server.publish(1)
    return _enrolled(server)


def _memo(server: InProcessServer) -> PollMemo:
    memo = nodeprotocol._memo_of(_door(server))
    assert memo is not None
    return memo


def _answered_304(server: InProcessServer) -> float:
    metrics = server.app.state.ctx.metrics
    value = metrics.registry.get_sample_value(
        "endpoint_server_requests_total", {"method": "GET", "status": "304"}
    )
    return value or 0.0


def test_a_poll_read_again_is_answered_without_the_parser(
    server: InProcessServer, node: dict[str, str], begun: _Begun
) -> None:
    raw = _poll(node)
    reference = _same_both_ways(server, raw)[0]  # the app's bytes; this also remembers it
    assert raw in _memo(server).entries
    counted, parsed = _answered_304(server), begun.total()
    activity = server.app.state.ctx.activity
    with activity._lock:
        activity._seen.clear()
    with _connect(server) as sock:  # a new connection's first request, then again on it
        reader = _Reader(sock)
        for _ in range(3):
            sock.sendall(raw)
            assert _without_date(reader.answer()) == _without_date(reference)
        assert _protocol_of(server, sock).parser is None  # a connection that never needed one
    assert begun.total() == parsed  # never in the parser
    assert _answered_304(server) == counted + 3
    with activity._lock:
        assert node["host_id"] in activity._seen  # the host's contact, noted for the write-behind
    closing = _poll(node, "Connection: close\r\n")
    _same_both_ways(server, closing)  # remembered with its keep-alive: closed after, again
    assert closing in _memo(server).entries
    assert _same_both_ways(server, closing) == _same_both_ways(server, closing)


def test_what_is_not_one_whole_poll_goes_through_the_parser(
    server: InProcessServer, node: dict[str, str], begun: _Begun
) -> None:
    raw = _poll(node)
    _exchange(server, raw, 1)  # remembered
    assert raw in _memo(server).entries
    with _connect(server) as sock:  # split across two reads
        reader = _Reader(sock)
        sock.sendall(raw[:25])
        _wait_read(server)
        sock.sendall(raw[25:])
        assert _status(reader.answer()) == 304
        assert begun.on(server, sock) == 1
        sock.sendall(raw + raw[:10])  # followed by a part of the next request in the same read
        assert _status(reader.answer()) == 304
        sock.sendall(raw[10:])
        assert _status(reader.answer()) == 304
        assert begun.on(server, sock) == 3
    before = begun.total()
    assert [_status(a) for a in _same_both_ways(server, raw + raw, 2)] == [304, 304]  # pipelined
    assert begun.total() == before + 2 * 2  # (both ways)
    # A remembered poll's bytes as a heartbeat's body are that body, not a request.
    smuggled = _beat(node, b"", length=len(raw))
    with _connect(server) as sock:
        reader = _Reader(sock)
        sock.sendall(smuggled)
        _wait_read(server)
        sock.sendall(raw)
        assert _status(reader.answer()) == 422
    assert [_status(a) for a in _same_both_ways(server, smuggled + raw)] == [422]
    # Longer than is remembered: answered, never remembered.
    long = _poll(node, f"X-Padding: {'p' * MEMO_BYTES}\r\n")
    for _ in range(2):
        assert _status(_same_both_ways(server, long)[0]) == 304
    assert long not in _memo(server).entries
    # Duplicate headers: the request the parser made of it, the first of each counting, both times.
    other = _enrolled(server, "ws-2")
    doubled = _poll(node, f'Authorization: Bearer {other["node_key"]}\r\nIf-None-Match: "x"\r\n')
    first = _same_both_ways(server, doubled)
    assert _status(first[0]) == 304 and doubled in _memo(server).entries
    assert [_without_date(a) for a in _same_both_ways(server, doubled)] == [_without_date(first[0])]


def test_a_remembered_poll_is_decided_again_when_what_it_rests_on_changes(
    server: InProcessServer, node: dict[str, str], begun: _Begun
) -> None:
    raw = _poll(node)
    door = _door(server)
    # A flood: refused like any request, without the parser.
    _exchange(server, raw, 1)
    admission = door.admission
    lag = admission.overloaded
    admission.overloaded = lambda: True
    try:
        before = begun.total()
        with _connect(server) as sock:
            reader = _Reader(sock)
            sock.sendall(raw)
            refused = reader.answer()
        assert begun.total() == before and _status(refused) == 503 and b"\r\nretry-after: 2\r\n" in refused
        assert _status(_same_both_ways(server, raw)[0]) == 503
    finally:
        admission.overloaded = lag
    # Memory not trusted (the change feed unread): the route answers, from the database.
    keys = server.app.state.ctx.auth.keys
    fresh = keys.fresh
    keys.fresh = lambda: False
    try:
        with asgi_requests(server) as calls:
            assert _status(_exchange(server, raw, 1)[0][0]) == 304
        assert calls and calls[0].startswith("GET ")
    finally:
        keys.fresh = fresh
    _exchange(server, raw, 1)
    # A new policy: the poll's ETag is old, it gets the new envelope.
    server.publish(2)
    answered = _same_both_ways(server, raw)[0]
    assert _status(answered) == 200 and b"\r\nx-policy-version: 2\r\n" in answered
    # The host enrolled again (its key rotated): the old key is refused.
    with server.client(server.config.enroll_secret) as c:
        body = {"hostname": "ws-1", "machine_id": "m-ws-1", "node_key": node["node_key"]}
        assert c.post("/enroll", json=body).status_code == 200
    assert _status(_same_both_ways(server, raw)[0]) == 401


def test_a_remembered_poll_takes_the_rate_limit(tmp_path: Path, begun: _Begun) -> None:
    for live in _server(tmp_path, rate_burst=5, rate_limit=0.01):
        live.publish(1)
        node = _enrolled(live)
        raw = _poll(node)
        statuses = [_status(_exchange(live, raw, 1)[0][0]) for _ in range(6)]
        assert raw in _memo(live).entries
        assert statuses[:4] == [304] * 4 and statuses[-1] == 429  # (the enrolling poll took one)


def test_the_memo_holds_no_more_than_its_budget(
    server: InProcessServer, node: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One node varying a header floods it with distinct remembered polls: it starts over, within
    the budget, and what it holds is counted as the requests' bytes and what an entry costs."""
    budget = 40_000
    monkeypatch.setattr(nodeprotocol, "MEMO_BUDGET", budget)
    memo = _memo(server)
    sizes = []
    for n in range(40):
        raw = _poll(node, f"X-Padding: {n:04d}{'p' * 3000}\r\n")
        assert _status(_exchange(server, raw, 1)[0][0]) == 304
        assert raw in memo.entries and memo.held <= budget
        assert memo.held == sum(len(k) + nodeprotocol.ENTRY_COST for k in memo.entries)
        sizes.append(len(memo.entries))
    assert max(sizes) == budget // (len(raw) + nodeprotocol.ENTRY_COST) and min(sizes) == 1


def test_a_heartbeat_is_never_remembered(server: InProcessServer, node: dict[str, str]) -> None:
    raw = _beat(node, GOOD)
    for _ in range(2):
        assert _status(_exchange(server, raw, 1)[0][0]) == 200
    assert raw not in _memo(server).entries and not _memo(server).entries
