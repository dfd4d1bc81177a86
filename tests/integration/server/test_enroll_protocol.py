"""POST /enroll answered in the HTTP parser's callbacks (server_stub/nodeprotocol.py with
server_stub/enrollserve.py EnrollDoor), against the real app under uvicorn on 127.0.0.1, over raw
sockets, on SQLite and PostgreSQL:

- an enrollment with the fleet secret reaches no ASGI application, and the host it is answered
  with is stored with the key it is answered with; what the protocol leaves (a body that does
  not validate, an enroll token, another content type, chunked, too large) reaches it once;
- every answer is the one the application gives with the protocol's answers switched off (but
  Date, and the new host id and key of a 200): refused re-enrollment (409), this host's bucket
  dry (429), the credential's/address's bucket dry (429, closed), a full queue (503), a failed
  write (503), invalid bodies (422), HTTP/1.0 and Connection: close;
- requests pipelined behind an enrollment waiting for its group are answered after it, in order;
- a client that leaves before its group is taken is not written; an enrollment waiting for its
  group is not counted in flight (it holds no thread); a server stopping answers the enrollment
  it waits for, then closes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from server_stub.enrollserve import ENROLL_DOOR_STATE, EnrollDoor
from server_stub.frontdoor import FrontDoor
from server_stub.listener import FRONT_DOOR_STATE
from server_stub.nodeprotocol import NodeProtocol
from server_stub.store.hosts import Enrollment
from tests.support.inprocess_server import InProcessServer, asgi_requests, in_process_server
from tests.support.poison import poison_hostname
from tests.support.server import API, fresh_pg_database, pg_url_or_skip

DEADLINE = 60.0  # only keeps a broken build from hanging


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InProcessServer]:
    with contextlib.ExitStack() as stack:
        db_url = (
            stack.enter_context(fresh_pg_database(pg_url_or_skip())) if request.param == "postgres" else None
        )
        yield stack.enter_context(in_process_server(tmp_path, listener=True, db_url=db_url, body_timeout=1.0))


def _door(server: InProcessServer) -> FrontDoor:
    door: FrontDoor = server.server.lifespan.state[FRONT_DOOR_STATE]
    return door


def _enroll(
    server: InProcessServer,
    body: dict[str, str] | bytes,
    *,
    token: str | None = None,
    extra: str = "",
    version: str = "1.1",
    content_type: str = "application/json",
) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = f"Authorization: Bearer {token or server.config.enroll_secret}\r\n"
    head = f"POST {API}/enroll HTTP/{version}\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\n"
    return f"{head}Content-Length: {len(data)}\r\n{extra}\r\n".encode() + data


def _machine(name: str, **more: str) -> dict[str, str]:
    return {"hostname": name, "machine_id": "m-" + name, **more}


HEALTHZ = f"GET {API}/healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """`count` whole answers (head and Content-Length body); then nothing more until closed (by
    the server after a closing answer, else after this side ends its own)."""
    data, answers = b"", list[bytes]()
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            length = next(
                (
                    int(v)
                    for n, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                    if n.lower() == b"content-length"
                ),
                0,
            )
            if len(data) >= end + 4 + length:
                answers.append(data[: end + 4 + length])
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(answers)} answers: {data[:200]!r}")
        data += chunk
    if not any(b"\r\nconnection: close\r\n" in a for a in answers[-1:]):
        sock.shutdown(socket.SHUT_WR)  # else the server keeps it open: this side ends first
    try:
        rest = sock.recv(65536)
        while rest:
            data += rest
            rest = sock.recv(65536)
    except ConnectionResetError:
        pass
    assert data == b"", data[:200]
    return answers


def _exchange(server: InProcessServer, raw: bytes, count: int = 1) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        sock.sendall(raw)
        return _answers(sock, count)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _comparable(answer: bytes) -> tuple[bytes, Any]:
    """The head without Date and the JSON body; a 200's new host id and key left out."""
    head, _, body = answer.partition(b"\r\n\r\n")
    # Retry-After counts down while the two answers are made: compared apart.
    varying = (b"date:", b"content-length:", b"retry-after:")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(varying)]
    parsed: Any = json.loads(body) if body else None
    if _status(answer) == 200:
        assert set(parsed) == {"host_id", "node_key"}
        parsed = sorted(parsed)
    return b"\r\n".join(lines), parsed


def _both_ways(server: InProcessServer, make: Callable[[], bytes], count: int = 1) -> list[bytes]:
    """The answers with the protocol's answers on; those with it off must be the same."""
    mine = _exchange(server, make(), count)
    door = _door(server)
    door.fast = False
    try:
        theirs = _exchange(server, make(), count)
    finally:
        door.fast = True
    assert [_comparable(a) for a in mine] == [_comparable(a) for a in theirs]
    return mine


def _stored(server: InProcessServer, machine_id: str) -> dict[str, Any] | None:
    from sqlalchemy import select

    from server_stub.store.tables import hosts

    with server.store.engine.connect() as conn:
        row = conn.execute(select(hosts).where(hosts.c.machine_id == machine_id)).mappings().first()
    return dict(row) if row is not None else None


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_door_is_in_the_lifespan_state(server: InProcessServer) -> None:
    assert isinstance(server.server.lifespan.state[ENROLL_DOOR_STATE], EnrollDoor)


def test_an_enrollment_reaches_no_asgi_application_and_its_key_works(server: InProcessServer) -> None:
    from server_stub.auth import hash_node_key

    with asgi_requests(server) as asgi_calls:
        (answer,) = _exchange(server, _enroll(server, _machine("ws-1")))
    assert _status(answer) == 200
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert asgi_calls == []
    row = _stored(server, "m-ws-1")
    assert row is not None and row["host_id"] == body["host_id"] and row["hostname"] == "ws-1"
    assert row["node_key_hash"] == hash_node_key(body["node_key"])
    with server.client(body["node_key"]) as c:
        assert c.get("/policy").status_code == 404  # known (no policy published): not 401
    assert _door(server).admission.in_flight == 0


def test_what_the_protocol_leaves_reaches_the_application_once(server: InProcessServer) -> None:
    token = _token(server)
    body = json.dumps(_machine("ws-chunked")).encode()
    chunked = (
        (
            f"POST {API}/enroll HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.config.enroll_secret}\r\n"
            f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n"
        ).encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    raws = [
        _enroll(server, b'{"hostname": "x"}'),  # does not validate: the route's 422
        _enroll(server, _machine("ws-t"), token=token),  # an enroll token: looked up in the database
        _enroll(server, _machine("ws-c"), content_type="text/plain"),  # the route's 422
        _enroll(server, json.dumps(_machine("ws-big")).encode() + b" " * 70_000),  # above what is read here
        chunked,
        # the client's address may come from the proxy header (uvicorn's layer): the application's
        _enroll(server, _machine("ws-fwd"), extra="X-Forwarded-For: 10.1.2.3\r\n"),
    ]
    with asgi_requests(server) as asgi_calls:
        statuses = [_status(_exchange(server, raw)[0]) for raw in raws]
    assert statuses == [422, 200, 422, 200, 200, 200]
    assert asgi_calls == [f"POST {API}/enroll"] * len(raws)
    assert _stored(server, "m-ws-big") is not None and _stored(server, "m-ws-chunked") is not None


def _token(server: InProcessServer) -> str:
    with server.client(server.config.admin_token) as c:
        answer = c.post("/enroll-tokens", json={"uses": 5, "expires_in": 3600})
        answer.raise_for_status()
        token: str = answer.json()["token"]
        return token


def test_answers_are_the_applications(server: InProcessServer) -> None:
    names = iter(range(1000))

    def fresh(**more: str) -> Callable[[], bytes]:
        return lambda: _enroll(server, _machine(f"ws-{next(names)}", **more))

    assert _status(_both_ways(server, fresh())[0]) == 200
    assert _status(_both_ways(server, fresh(), count=1)[0]) == 200
    taken = _machine("taken")
    _exchange(server, _enroll(server, taken))
    assert _status(_both_ways(server, lambda: _enroll(server, taken))[0]) == 409
    wrong_key = _machine("taken", node_key="not-its-key")
    assert _status(_both_ways(server, lambda: _enroll(server, wrong_key))[0]) == 409
    assert _status(_both_ways(server, lambda: _enroll(server, b"[1, 2"))[0]) == 422
    utf16 = _both_ways(
        server, lambda: _enroll(server, json.dumps(_machine(f"w{next(names)}")).encode("utf-16"))
    )
    assert _status(utf16[0]) == 200  # read by the route (json.loads takes UTF-16)
    assert (
        _status(
            _both_ways(server, lambda: _enroll(server, b'{"hostname": "a\\u0000", "machine_id": "m"}'))[0]
        )
        == 422
    )
    assert (
        _status(_both_ways(server, lambda: _enroll(server, _machine(f"v{next(names)}"), version="1.0"))[0])
        == 200
    )
    closing = _both_ways(
        server, lambda: _enroll(server, _machine(f"c{next(names)}"), extra="Connection: close\r\n")
    )
    assert b"\r\nconnection: close\r\n" in closing[0]
    unknown = _both_ways(server, lambda: _enroll(server, _machine("u"), token="enr-not-the-secret"))
    assert _status(unknown[0]) == 401
    late = _both_ways(server, lambda: _enroll(server, _machine("late"))[:-5])  # the body never ends
    assert _status(late[0]) == 408 and _stored(server, "m-late") is None
    expect = _both_ways(
        server,
        lambda: _enroll(server, _machine(f"e{next(names)}"), extra="Expect: 100-continue\r\n"),
        count=2,
    )
    assert [_status(a) for a in expect] == [100, 200]  # the application's


def test_a_dry_host_bucket_is_answered_as_the_application_does(server: InProcessServer) -> None:
    bucket = server.app.state.ctx.limits.enrolling_hosts
    bucket.acquire("m-dry")
    bucket.debit("m-dry", 1_000_000)  # dry for a few seconds (as if other processes took it all)
    answers = _both_ways(server, lambda: _enroll(server, _machine("dry")))
    assert _status(answers[0]) == 429 and b"\r\nretry-after: " in answers[0]
    assert _stored(server, "m-dry") is None


def test_a_dry_credential_or_address_is_refused_before_the_body(server: InProcessServer) -> None:
    limits = server.app.state.ctx.limits
    limits.enroll_addresses.acquire("addr:127.0.0.1")
    limits.enroll_addresses.debit("addr:127.0.0.1", 1_000_000)
    answers = _both_ways(server, lambda: _enroll(server, _machine("addr")))
    assert _status(answers[0]) == 429 and b"\r\nconnection: close\r\n" in answers[0]
    assert _stored(server, "m-addr") is None


def test_a_full_queue_and_a_failed_write_are_answered_as_the_application_does(
    server: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    batcher = server.app.state.ctx.enrollments
    limit = batcher._max_queue
    batcher._max_queue = 0
    try:
        busy = _both_ways(server, lambda: _enroll(server, _machine("busy")))
    finally:
        batcher._max_queue = limit
    assert _status(busy[0]) == 503 and b"\r\nretry-after: 2\r\n" in busy[0]
    url = str(server.store.engine.url.render_as_string(hide_password=False))
    poison_hostname(url, "poison")
    failed = _both_ways(server, lambda: _enroll(server, {"hostname": "poison", "machine_id": "m-p"}))
    assert _status(failed[0]) == 503 and b"\r\nretry-after: 5\r\n" in failed[0]
    assert _stored(server, "m-p") is None and _door(server).admission.in_flight == 0


class _Held:
    """The group commit's writes held until released: enrollments wait for their group."""

    def __init__(self, server: InProcessServer) -> None:
        self.batcher = server.app.state.ctx.enrollments
        self.real = self.batcher._write
        self.entered = threading.Event()
        self.release = threading.Event()
        self.groups: list[list[str]] = []

    def write(self, items: Sequence[Enrollment], now: datetime) -> list[Any]:
        self.groups.append([item.machine_id for item in items])
        self.entered.set()
        assert self.release.wait(DEADLINE)
        return self.real(items, now)

    def __enter__(self) -> _Held:
        self.batcher._write = self.write
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.batcher._write = self.real


def test_requests_pipelined_behind_a_waiting_enrollment_are_answered_after_it(
    server: InProcessServer,
) -> None:
    raw = (
        _enroll(server, _machine("p1"))
        + HEALTHZ
        + _enroll(server, _machine("p2"))
        + _enroll(server, b"{}")  # the route's 422
        + _enroll(server, _machine("p3"), extra="Connection: close\r\n")
        + HEALTHZ  # after a closing answer: never answered
    )
    with (
        _Held(server) as held,
        socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock,
    ):
        sock.sendall(raw)
        assert held.entered.wait(DEADLINE)
        assert _door(server).admission.in_flight == 0  # waiting for its group: no thread held
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):  # nothing before the first enrollment's answer
            sock.recv(1)
        sock.settimeout(DEADLINE)
        held.release.set()
        answers = _answers(sock, 5)
    assert [_status(a) for a in answers] == [200, 200, 200, 422, 200]
    assert b"\r\nconnection: close\r\n" in answers[-1]
    assert [_stored(server, f"m-p{n}") is not None for n in (1, 2, 3)] == [True, True, True]
    assert _door(server).admission.in_flight == 0


def test_a_client_that_leaves_before_its_group_is_taken_is_not_written(server: InProcessServer) -> None:
    batcher, connections = server.app.state.ctx.enrollments, server.server.server_state.connections
    with _Held(server) as held:
        first = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        first.sendall(_enroll(server, _machine("first")))
        assert held.entered.wait(DEADLINE)  # the writer holds the first group
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as gone:
            gone.sendall(_enroll(server, _machine("gone")))
            _wait(lambda: len(batcher._queue) == 1, "the second enrollment is queued")
        _wait(lambda: len(connections) == 1, "the server saw it leave")
        held.release.set()
        with first:
            (answer,) = _answers(first, 1)
        assert _status(answer) == 200
    assert held.groups == [["m-first"]]
    assert _stored(server, "m-first") is not None and _stored(server, "m-gone") is None


def test_a_stopping_server_answers_the_enrollment_it_waits_for_then_closes(tmp_path: Path) -> None:
    server = InProcessServer(tmp_path, listener=True)
    server.start()
    try:
        with (
            _Held(server) as held,
            socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock,
        ):
            sock.sendall(_enroll(server, _machine("late")))
            assert held.entered.wait(DEADLINE)
            (connection,) = server.server.server_state.connections
            assert isinstance(connection, NodeProtocol)
            server.server.should_exit = True
            _wait(  # (the group may be entered before the protocol sets the cycle that stands for it)
                lambda: connection.cycle is not None and connection.cycle.keep_alive is False,
                "the shutdown reached the connection",
            )
            held.release.set()
            (answer,) = _answers(sock, 1)  # and then closed by the server
        assert _status(answer) == 200 and b"\r\nconnection: close\r\n" in answer
        assert _stored(server, "m-late") is not None
    finally:
        server.stop()
