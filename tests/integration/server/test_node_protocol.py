"""A node's poll and heartbeat answered in the HTTP parser's callbacks (server_stub/nodeprotocol.py),
against the real app under uvicorn on 127.0.0.1, over raw sockets.

- the bytes written are those uvicorn writes for the same ASGI messages, and the parts of
  uvicorn's protocol relied on are still there (fails loudly when uvicorn changes them);
- a valid poll or heartbeat reaches no ASGI application at all; what is not certain does, once,
  with the scope uvicorn makes (made, and the connection's addresses read, only then);
- the same raw requests get the same bytes (but Date) with the protocol's answers switched off
  (the first layer and the framework answer): HTTP/1.0, Connection: close, a late body (408), an
  announced body above what is read here, overload (503 with and without a body);
- pipelined requests are answered in order across answers written here and by the app, and
  nothing after a closing answer; a request in pieces is put together; a client that does not
  read its answers gets all of them, in order, once it does; an idle connection is closed after
  the keep-alive timeout, also after a dropped late body; a head that never ends is refused (400,
  closed) once HEAD_MAX bytes came, not kept;
- a flood is refused before any task; past the in-flight cap, polls and heartbeats are answered
  (from memory: no slot) and the rest is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from server_stub import nodeprotocol
from server_stub.admission import REFUSAL_BODY, refusal_headers
from server_stub.frontdoor import Answer, FrontDoor
from server_stub.listener import FRONT_DOOR_STATE
from server_stub.nodeprotocol import BODY_MAX, HEAD_MAX, NodeProtocol, render
from tests.support.inprocess_server import InProcessServer, asgi_requests, in_process_server
from tests.support.server import API

DEADLINE = 60.0  # only keeps a broken build from hanging
DEFAULT_HEADERS = [(b"date", b"Mon, 30 Nov 2026 14:00:00 GMT"), (b"server", b"uvicorn")]


# -- the bytes, and what is relied on in uvicorn -------------------------------------------------


class _Recorder:
    """The transport side uvicorn's RequestResponseCycle writes to."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, _name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _uvicorn_writes(answer: Answer, keep_alive: bool) -> tuple[bytes, bool]:
    """What uvicorn's own cycle writes for `answer` sent as two ASGI messages; closed after?"""
    import logging

    async def send() -> tuple[bytes, bool]:
        transport = _Recorder()
        scope: Any = {
            "method": "GET",
            "path": "/",
            "query_string": b"",
            "http_version": "1.1",
            "client": None,
        }
        cycle = RequestResponseCycle(
            scope=scope,
            transport=transport,  # type: ignore[arg-type]
            flow=FlowControl(transport),  # type: ignore[arg-type]
            logger=logging.getLogger("test"),
            access_logger=logging.getLogger("test.access"),
            access_log=False,
            default_headers=DEFAULT_HEADERS,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=lambda: None,
        )
        await cycle.send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await cycle.send({"type": "http.response.body", "body": answer.body})
        return transport.data, transport.closed

    return asyncio.run(send())


ANSWERS = [
    Answer(304, [(b"etag", b'"abc"'), (b"cache-control", b"no-cache"), (b"x-policy-version", b"3")], b""),
    Answer(
        200,
        [(b"etag", b'"abc"'), (b"content-length", b"2"), (b"content-type", b"application/json")],
        b"{}",
    ),
    Answer(200, [(b"content-length", b"15"), (b"content-type", b"application/json")], b'{"status":"ok"}'),
    Answer(429, [(b"retry-after", b"1"), (b"connection", b"close"), (b"content-length", b"0")], b""),
    Answer(503, refusal_headers(False), REFUSAL_BODY),
    Answer(503, refusal_headers(True), REFUSAL_BODY),
]


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("answer", ANSWERS, ids=[f"{a.status}-{i}" for i, a in enumerate(ANSWERS)])
def test_answers_are_the_bytes_uvicorn_writes(answer: Answer, keep_alive: bool) -> None:
    data, kept = render(DEFAULT_HEADERS, answer, keep_alive)
    theirs, closed = _uvicorn_writes(answer, keep_alive)
    assert data == theirs
    assert kept is not closed


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_refusal_rendered_once_follows_the_default_headers(keep_alive: bool) -> None:
    later = [(b"date", b"Mon, 30 Nov 2026 14:00:01 GMT"), (b"server", b"uvicorn")]
    for refusal in (nodeprotocol._REFUSED, nodeprotocol._REFUSED_CLOSING):
        for headers in (DEFAULT_HEADERS, DEFAULT_HEADERS, later, list(later)):
            assert nodeprotocol._rendered(headers, refusal, keep_alive) == render(
                headers, refusal, keep_alive
            )


def test_what_the_protocol_relies_on_in_uvicorn_is_there() -> None:
    """NodeProtocol subclasses uvicorn's httptools protocol: these names must keep their meaning.
    If this fails, uvicorn changed: read server_stub/nodeprotocol.py against its new code."""
    for name in (
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "data_received",
        "connection_made",
        "connection_lost",
        "shutdown",
        "_unset_keepalive_if_required",
        "send_400_response",
        "timeout_keep_alive_handler",
    ):
        assert callable(getattr(HttpToolsProtocol, name, None)), name
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app=_no_app, log_level="warning")
    door: Any = SimpleNamespace(poll_path="/p", beat_path="/b", fast=True)
    loop = asyncio.new_event_loop()
    try:
        proto = NodeProtocol(config, ServerState(), {}, loop, door=door)
        proto.connection_made(_Recorder())  # type: ignore[arg-type]
        proto.on_message_begin()
    finally:
        loop.close()
    for name in (
        "transport",
        "flow",
        "cycle",
        "pipeline",
        "parser",
        "loop",
        "server_state",
        "scope",
        "headers",
        "url",
        "expect_100_continue",
        "root_path",
        "access_log",
        "access_logger",
        "client",
        "timeout_keep_alive",
        "timeout_keep_alive_task",
    ):
        assert hasattr(proto, name), name
    assert proto.scope is None and proto.headers == [] and proto.url == b""  # made once handed on
    assert isinstance(proto._scope()["state"], dict) and proto.scope["headers"] is proto.headers
    assert proto.cycle is None and len(proto.pipeline) == 0 and proto.flow.write_paused is False


class _Socket:
    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8000)

    def getpeername(self) -> tuple[str, int]:
        return ("127.1.0.7", 40000)


class _AddressedTransport(_Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        self.asked.append(name)
        return _Socket() if name == "socket" else default


def test_a_request_handed_on_gets_the_scope_and_addresses_uvicorn_makes() -> None:
    """Made later (the addresses when first needed, the scope once a request is handed on), but
    the same: and nothing uvicorn sets as a connection is made or a request begins is missing."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app=_no_app, log_level="warning", root_path="/r")
    door: Any = SimpleNamespace(poll_path="/p", beat_path="/b", fast=True)
    loop = asyncio.new_event_loop()
    try:
        ours = NodeProtocol(config, ServerState(), {"k": 1}, loop, door=door)
        theirs = HttpToolsProtocol(config, ServerState(), {"k": 1}, loop)
        transports = _AddressedTransport(), _AddressedTransport()
        for proto, transport in zip((ours, theirs), transports, strict=True):
            proto.connection_made(transport)  # type: ignore[arg-type]
            proto.on_message_begin()
            proto.on_url(b"/x?y=1")
            proto.on_header(b"Expect", b"100-continue")
        assert "socket" not in transports[0].asked  # not read yet
        scope = ours._scope()
    finally:
        loop.close()
    assert scope == theirs.scope and scope["client"] == ("127.1.0.7", 40000)
    assert scope["server"] == ("127.0.0.1", 8000) and scope["headers"] == [(b"expect", b"100-continue")]
    assert ours.expect_100_continue and ours.url == b"/x?y=1" and scope["headers"] is ours.headers
    assert set(vars(theirs)) - {"server", "client"} <= set(vars(ours))


def test_a_connection_after_the_first_gets_what_uvicorn_would_give_it() -> None:
    """The first connection's protocol is made by uvicorn's __init__, the next ones copy what it
    shares (loggers, server state) and read the settings again; each has its own pipeline,
    enrollments, body and (once needed) parser."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app=_no_app, log_level="warning")
    door: Any = SimpleNamespace(poll_path="/p", beat_path="/b", fast=True)
    state, app_state = ServerState(), {"k": 1}
    loop = asyncio.new_event_loop()
    try:
        first = NodeProtocol(config, state, app_state, loop, door=door)
        second = NodeProtocol(config, state, app_state, loop, door=door)
        before = config.timeout_keep_alive
        config.timeout_keep_alive = before + 4  # read again for the next connection, as uvicorn does
        third = NodeProtocol(config, state, app_state, loop, door=door)
        theirs = HttpToolsProtocol(config, state, app_state, loop)
    finally:
        loop.close()
    assert first.parser is None and second.parser is None  # made when a read needs parsing
    assert set(vars(second)) == set(vars(first))
    assert set(vars(theirs)) - {"server", "client"} <= set(vars(second))
    for name, value in vars(first).items():
        assert vars(second)[name] == value, name
        if name in ("pipeline", "enrolling", "body"):
            assert vars(second)[name] is not value, name
    assert (first.timeout_keep_alive, third.timeout_keep_alive) == (before, theirs.timeout_keep_alive)
    assert third.timeout_keep_alive == before + 4


class _Door:
    poll_path, beat_path, fast = "/p", "/b", True


def test_what_connections_share_goes_with_the_server() -> None:
    """Kept on the door (the app's): once a server and its app are gone, nothing of theirs is
    kept for the connections' sake (a module-level map kept every app served, tests' included)."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app=_no_app, log_level="warning")
    door, state, app_state = _Door(), ServerState(), {"k": 1}
    loop = asyncio.new_event_loop()
    try:
        protocols = [NodeProtocol(config, state, app_state, loop, door=door) for _ in range(3)]
        assert protocols[2].parser is None  # (made from what the first shares)
    finally:
        loop.close()
    gone = [weakref.ref(o) for o in (door, state, config)]
    del protocols, door, state, config, app_state
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


# -- against the real server ---------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with in_process_server(tmp_path, listener=True, body_timeout=1.0) as live:
        yield live


def _door(server: InProcessServer) -> FrontDoor:
    door: FrontDoor = server.server.lifespan.state[FRONT_DOOR_STATE]
    return door


@pytest.fixture
def asgi_calls(server: InProcessServer) -> Iterator[list[str]]:
    with asgi_requests(server) as calls:
        yield calls


@pytest.fixture
def node(server: InProcessServer) -> dict[str, str]:
    server.publish(1)
    host = server.enroll("ws-1")
    with server.client(host["node_key"]) as c:
        host["etag"] = c.get("/policy").headers["etag"]
    return host


def _poll(node: dict[str, str], extra: str = "", version: str = "1.1") -> bytes:
    auth = f"Authorization: Bearer {node['node_key']}\r\n"
    tag = f"If-None-Match: {node['etag']}\r\n"
    return f"GET {API}/policy HTTP/{version}\r\nHost: x\r\n{auth}{tag}{extra}\r\n".encode()


def _beat(
    node: dict[str, str], body: bytes, extra: str = "", version: str = "1.1", length: int | None = None
) -> bytes:
    auth = f"Authorization: Bearer {node['node_key']}\r\n"
    size = len(body) if length is None else length
    head = f"POST {API}/heartbeat HTTP/{version}\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
    return f"{head}Content-Length: {size}\r\n{extra}\r\n".encode() + body


GOOD = b'{"agent_version": "1.2", "mode": "enforce", "counters": {"scans": 3}}'
INVALID = b'{"mode": "enforce"}'
HEALTHZ = f"GET {API}/healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _connect(server: InProcessServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)


class _Reader:
    """Whole answers from a socket, one at a time (head and Content-Length body)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def answer(self) -> bytes:
        while b"\r\n\r\n" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unanswered: {self.pending[:200]!r}")
            self.pending += chunk
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed within a body")
            rest += chunk
        self.pending = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    def closed(self) -> bool:
        """Whether the server closes the connection (nothing more comes) -- waits for it."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return self.pending == b""
                self.pending += chunk
        except ConnectionResetError:
            return self.pending == b""


def _protocol_of(server: InProcessServer, sock: socket.socket) -> NodeProtocol:
    """The server's protocol of this client's connection."""
    (proto,) = [
        p
        for p in server.server.server_state.connections
        if p.transport.get_extra_info("peername") == sock.getsockname()
    ]
    assert isinstance(proto, NodeProtocol)
    return proto


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.lower().startswith(b"date:"))


def _exchange(server: InProcessServer, raw: bytes, answers: int) -> tuple[list[bytes], bool]:
    """Send `raw` on a new connection: `answers` answers, and whether the server closed after
    (waited for when the last answer says so; else this client ends its side first)."""
    with _connect(server) as sock:
        sock.sendall(raw)
        reader = _Reader(sock)
        got = [reader.answer() for _ in range(answers)]
        if b"\r\nconnection: close\r\n" not in got[-1]:
            sock.shutdown(socket.SHUT_WR)
        return got, reader.closed()


def _same_both_ways(server: InProcessServer, raw: bytes, answers: int = 1) -> list[bytes]:
    """The answers with the protocol's answers on, which must be those with it off (but Date)."""
    door = _door(server)
    mine = _exchange(server, raw, answers)
    door.fast = False
    try:
        theirs = _exchange(server, raw, answers)
    finally:
        door.fast = True
    assert [_without_date(a) for a in mine[0]] == [_without_date(a) for a in theirs[0]]
    assert mine[1] == theirs[1]
    return mine[0]


def test_hot_requests_reach_no_asgi_application(
    server: InProcessServer, node: dict[str, str], asgi_calls: list[str]
) -> None:
    with _connect(server) as sock:
        reader = _Reader(sock)
        for raw in (_poll(node), _beat(node, GOOD), _poll(node)):
            sock.sendall(raw)
            assert _status(reader.answer()) in (200, 304)
        assert asgi_calls == []
        sock.sendall(_beat(node, INVALID))  # the route says why: through the app, once
        assert _status(reader.answer()) == 422
        sock.sendall(_beat(node, b" " * (BODY_MAX + 1) + GOOD))  # above what is read here: the app's
        assert _status(reader.answer()) == 200
    assert asgi_calls == [f"POST {API}/heartbeat", f"POST {API}/heartbeat"]
    activity = server.app.state.ctx.activity
    with activity._lock:
        beat = activity._beats[node["host_id"]][0]
    assert beat.agent_version == "1.2"


def test_a_poll_answered_here_reads_no_address_a_request_handed_on_does(
    server: InProcessServer, node: dict[str, str]
) -> None:
    app: Any = server.app  # a ServerApp
    door = app.front_door
    clients: list[Any] = []

    async def seeing(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            clients.append(scope["client"])
        await door(scope, receive, send)

    app.front_door = seeing
    try:
        with _connect(server) as sock:
            reader = _Reader(sock)
            sock.sendall(_poll(node))
            assert _status(reader.answer()) == 304
            here = sock.getsockname()
            assert _protocol_of(server, sock)._client is nodeprotocol._UNREAD
            sock.sendall(f"GET {API}/healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert _status(reader.answer()) == 200
    finally:
        app.front_door = door
    assert clients == [here]


def test_edge_requests_get_the_same_bytes_as_from_the_app(
    server: InProcessServer, node: dict[str, str]
) -> None:
    assert _status(_same_both_ways(server, _poll(node))[0]) == 304
    assert _status(_same_both_ways(server, _poll(node, version="1.0"))[0]) == 304  # closed after
    assert _status(_same_both_ways(server, _poll(node, "Connection: close\r\n"))[0]) == 304
    assert _status(_same_both_ways(server, _beat(node, GOOD, version="1.0"))[0]) == 200
    assert _status(_same_both_ways(server, _beat(node, INVALID, "Connection: close\r\n"))[0]) == 422
    assert _status(_same_both_ways(server, _beat(node, INVALID, version="1.0"))[0]) == 422
    assert _status(_same_both_ways(server, _beat(node, b"x" * 10, length=BODY_MAX + 10))[0]) == 408
    assert _status(_same_both_ways(server, _beat(node, GOOD[:10], length=len(GOOD)))[0]) == 408


def test_overload_is_refused_before_any_task(
    server: InProcessServer, node: dict[str, str], asgi_calls: list[str]
) -> None:
    admission = _door(server).admission
    lag = admission.overloaded
    admission.overloaded = lambda: True  # a flood: the loop lags (server_stub/listener.py)
    try:
        refused = _same_both_ways(server, _poll(node) + _poll(node), 2)
        with_body = _same_both_ways(server, _beat(node, GOOD))
        other = _same_both_ways(server, f"GET {API}/hosts HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        asgi_calls.clear()
        for answer in (*refused, *with_body, *other):
            assert _status(answer) == 503 and b"\r\nretry-after: 2\r\n" in answer
        assert b"connection: close" in with_body[0] and b"connection: close" not in refused[0]
        with _connect(server) as sock:
            sock.sendall(_poll(node) + HEALTHZ)
            reader = _Reader(sock)
            assert _status(reader.answer()) == 503
            assert _status(reader.answer()) == 200  # never refused
        assert asgi_calls == [f"GET {API}/healthz"]
    finally:
        admission.overloaded = lag


def test_past_the_in_flight_cap_polls_and_heartbeats_are_answered_the_rest_refused(
    server: InProcessServer, node: dict[str, str], asgi_calls: list[str]
) -> None:
    """Answered from memory they take no slot; what would reach the application is refused 503,
    before any task (or by the first layer, for a hot request it hands on)."""
    admission = _door(server).admission
    admission.limit = 0
    try:
        with _connect(server) as sock:
            reader = _Reader(sock)
            sock.sendall(
                _poll(node) + _beat(node, GOOD) + f"GET {API}/hosts HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert [_status(reader.answer()) for _ in range(3)] == [304, 200, 503]
            assert asgi_calls == []
            sock.sendall(_beat(node, INVALID))  # the route would say why: it takes a slot
            refused = reader.answer()
        assert _status(refused) == 503 and b"\r\nretry-after: 2\r\n" in refused
        assert asgi_calls == [f"POST {API}/heartbeat"]
    finally:
        admission.limit = 10_000


def test_pipelined_requests_are_answered_in_order(server: InProcessServer, node: dict[str, str]) -> None:
    raw = (
        _poll(node)
        + _beat(node, GOOD)
        + _beat(node, INVALID)  # the app's answer, between two of the protocol's
        + _poll(node)
        + HEALTHZ
        + _beat(node, GOOD)
        + _poll(node, "Connection: close\r\n")
        + _poll(node)  # after a closing answer: never answered
    )
    with _connect(server) as sock:
        sock.sendall(raw)
        reader = _Reader(sock)
        answers = [reader.answer() for _ in range(7)]
        assert reader.closed()
    assert [_status(a) for a in answers] == [304, 200, 422, 304, 200, 200, 304]
    assert b"\r\nconnection: close\r\n" in answers[-1]


def test_a_request_in_pieces_is_put_together(server: InProcessServer, node: dict[str, str]) -> None:
    raw = _beat(node, GOOD) + _poll(node)
    with _connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(sock)
        for piece in (
            raw[:3],
            raw[3:40],
            raw[40 : -len(GOOD) - 150],
            raw[-len(GOOD) - 150 : -150],
            raw[-150:],
        ):
            sock.sendall(piece)
            _wait_read(server)
        assert [_status(reader.answer()) for _ in range(2)] == [200, 304]


def _wait_read(server: InProcessServer) -> None:
    """Until the server's loop has run once more (so a piece sent is read on its own)."""
    with server.client() as c:
        c.get("/healthz")


def test_a_client_that_does_not_read_gets_every_answer_in_order(
    server: InProcessServer, node: dict[str, str]
) -> None:
    count = 6000  # ~1.5 MB of answers: past the transport's high-water mark while nobody reads
    raw = (_poll(node) + _beat(node, GOOD)) * (count // 2)
    with _connect(server) as sock:
        sender = threading.Thread(target=sock.sendall, args=(raw,))
        sender.start()
        _wait_read(server)
        reader = _Reader(sock)
        statuses = [_status(reader.answer()) for _ in range(count)]
        sender.join(DEADLINE)
    assert statuses == [304, 200] * (count // 2)


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: InProcessServer, node: dict[str, str]
) -> None:
    server.server.config.timeout_keep_alive = 1  # (5 s by default) for connections made from now
    for raw in (_poll(node), _beat(node, GOOD[:5], length=len(GOOD))):  # answered; a late body (408)
        with _connect(server) as sock:
            sock.sendall(raw)
            reader = _Reader(sock)
            assert _status(reader.answer()) in (304, 408)
            if raw.startswith(b"POST"):
                sock.sendall(GOOD[5:])  # the rest of the late body: dropped, the connection stays
                sock.sendall(_poll(node))
                assert _status(reader.answer()) == 304
            assert reader.closed()  # by uvicorn's keep-alive timeout, not by this client


def test_the_keep_alive_timeout_runs_from_the_last_answer(
    server: InProcessServer, node: dict[str, str]
) -> None:
    """One timer per keep-alive period: answers meanwhile put its end off, not a new timer each."""
    server.server.config.timeout_keep_alive = 2  # for connections made from now
    with _connect(server) as sock:
        reader = _Reader(sock)
        timers = []
        for _ in range(6):  # 3 s of polls 0.5 s apart, longer than the timeout: still open
            sock.sendall(_poll(node))
            assert _status(reader.answer()) == 304
            proto = _protocol_of(server, sock)
            timers.append(proto.timeout_keep_alive_task)
            time.sleep(0.5)
        assert timers[1] is timers[0]  # not a new timer per answer
        sock.sendall(_beat(node, GOOD))
        assert _status(reader.answer()) == 200
        assert reader.closed()  # then idle: closed by the server


def test_heartbeat_stored_is_the_one_validated(server: InProcessServer, node: dict[str, str]) -> None:
    body = json.dumps({"agent_version": "9", "mode": "monitor", "counters": {"queue_pending": 7}}).encode()
    answers, _ = _exchange(server, _beat(node, body, "Connection: close\r\n"), 1)
    assert _status(answers[0]) == 200
    activity = server.app.state.ctx.activity
    with activity._lock:
        beat = activity._beats[node["host_id"]][0]
    assert (beat.agent_version, beat.mode, dict(beat.counters)) == ("9", "monitor", {"queue_pending": 7})


def test_a_head_that_never_ends_is_refused_not_kept(server: InProcessServer, node: dict[str, str]) -> None:
    ceiling = 32 * HEAD_MAX  # what kernel buffers could take in besides; the server kept all of it before
    with _connect(server) as sock:
        sock.sendall(_poll(node))  # a request, then one whose header goes on and on
        sock.sendall(f"GET {API}/healthz HTTP/1.1\r\nHost: x\r\nX-Long: ".encode())
        reader = _Reader(sock)
        assert _status(reader.answer()) == 304
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent <= ceiling:
                sock.sendall(b"a" * 65536)
                sent += 65536
        refused = b""
        with contextlib.suppress(ConnectionError):  # the answer may be lost to the reset
            refused = reader.answer()
    assert sent <= ceiling, "the server went on reading the head"
    assert refused == b"" or refused.startswith(b"HTTP/1.1 400"), refused[:100]


def test_a_closed_connection_leaves_no_cycle_for_the_collector(server: InProcessServer) -> None:
    """A connection ends by reference counting, whatever it served (a request handed on to
    uvicorn's own cycle, an enrollment answered here): the full collections that come on a clock
    (server_stub/heap.py) find nothing of it. An enrollment's RequestResponseCycle pointed back
    at the protocol (on_response) while the protocol held it (cycle) -- uvicorn unhooks its own
    cycles once their app returns; this one has no app: protocol, cycle, transport, flow
    control and scope waited for a full collection, per connection whose last request it was."""
    ours = {"NodeProtocol", "RequestResponseCycle", "FlowControl", "Principal", "NodeHead"}
    enroll_auth = f"Authorization: Bearer {server.config.enroll_secret}\r\n"
    gc.collect()
    gc.disable()
    try:
        for n in range(8):
            body = json.dumps({"hostname": f"ws-gc{n}", "machine_id": f"m-gc{n}"}).encode()
            head = f"POST {API}/enroll HTTP/1.1\r\nHost: x\r\n{enroll_auth}Content-Type: application/json\r\n"
            with _connect(server) as sock:
                reader = _Reader(sock)
                sock.sendall(HEALTHZ)  # handed on: uvicorn's own cycle
                assert _status(reader.answer()) == 200
                sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                assert _status(reader.answer()) == 200  # the connection's last: answered here
        deadline = time.monotonic() + DEADLINE
        while server.server.server_state.connections and time.monotonic() < deadline:
            time.sleep(0.01)  # the server sees each close (connection_lost)
        assert not server.server.server_state.connections
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__name__ in ours]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
