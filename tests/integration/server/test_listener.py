"""Overload refused at the listener (server_stub/listener.py), against the real uvicorn on 127.0.0.1.

- the lag meter sees an event loop that was blocked, and lets go once it runs freely again;
- a lagging loop that answers little is not overloaded, however many idle keep-alive
  connections are open (a fleet's; one gc pause);
- while the loop lags under a flood, every new connection's request is answered 503 +
  Retry-After + Connection: close (the same body as the in-flight cap's), a flood of them
  included, nothing left waiting, and so is a request on a connection already open; /healthz is
  still served; the refusals are counted; once the loop keeps up, requests are served again;
- connections waiting in the accept queue are all taken at the loop's next turn, not one a turn
  (uvloop's libuv), so a new connection is not left waiting behind a busy loop; as many as wait
  (counted by the kernel), each started, none held after.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_stub.listener import LISTENER_STATE, TICK, Acceptor, LoopLag, queued
from tests.support.inprocess_server import InProcessServer, in_process_server
from tests.support.server import API

DEADLINE = 60.0  # only keeps a broken build from hanging


def test_the_meter_sees_a_blocked_loop_and_lets_go() -> None:
    async def scenario() -> tuple[bool, bool, float, bool]:
        meter = LoopLag(0.05, 0, lambda _: True, lambda _: None)
        meter.start()
        await asyncio.sleep(TICK * 3)
        calm = meter.lagging
        time.sleep(0.2)  # the loop held: its next tick runs ~0.2 s late
        seen, lag = False, 0.0
        for _ in range(200):  # the late tick runs at the loop's next turn
            await asyncio.sleep(0.001)
            if meter.lagging:
                seen, lag = True, meter.lag
                break
        deadline = time.monotonic() + DEADLINE
        while meter.lagging and time.monotonic() < deadline:
            await asyncio.sleep(TICK)
        meter.stop()
        return calm, seen, lag, meter.lagging

    calm, seen, lag, still = asyncio.run(scenario())
    assert not calm and seen and lag >= 0.15 and not still


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with in_process_server(tmp_path, listener=True) as live:
        yield live


def _meter(server: InProcessServer) -> LoopLag:
    meter: LoopLag = server.server.lifespan.state[LISTENER_STATE]
    return meter


async def _flood(port: int, requests: list[bytes]) -> list[bytes]:
    """One connection per request, all at once; each whole answer (b"" if none came)."""

    async def one(request: bytes) -> bytes:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return b""
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()  # to the server's close
        except OSError:
            return b""
        finally:
            writer.close()

    async with asyncio.timeout(DEADLINE):
        return await asyncio.gather(*(one(r) for r in requests))


def _read_answer(sock: socket.socket) -> bytes:
    """One answer on a kept-alive connection: head and Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _refused_total(server: InProcessServer) -> float:
    with server.client(server.config.reader_token) as c:
        text = c.get(server.base_url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "endpoint_server_requests_refused_total" and s.labels["reason"] == "overload"
    )


def test_new_connections_are_refused_while_the_loop_lags(server: InProcessServer) -> None:
    server.publish(1)
    host = server.enroll("ws-1")
    poll = (
        f"GET {API}/policy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {host['node_key']}\r\n\r\n".encode()
    )
    beat_body = b'{"agent_version": "1"}'
    beat = (
        f"POST {API}/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {host['node_key']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(beat_body)}\r\n\r\n"
    ).encode() + beat_body
    health = f"GET {API}/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    before = _refused_total(server)
    meter = _meter(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as kept:
        kept.sendall(poll)
        assert _read_answer(kept).startswith(b"HTTP/1.1 200")  # a connection open before the lag
        meter.max_lag, meter.min_load = -1.0, 0  # any lag at all counts: all refused
        try:
            deadline = time.monotonic() + DEADLINE
            while not meter.lagging and time.monotonic() < deadline:
                time.sleep(TICK)
            answers = asyncio.run(_flood(server.port, [poll] * 200 + [beat] * 50 + [health]))
            # On the connection already open: the same refusal, by the app's first layer.
            kept.sendall(poll)
            again = _read_answer(kept)
            kept.sendall(beat)
            with_body = _read_answer(kept)
        finally:
            meter.max_lag = 60.0
    assert again.startswith(b"HTTP/1.1 503") and b"\r\nretry-after: 2\r\n" in again
    assert again.endswith(b'{"error":"server busy; retry later"}')
    assert with_body.startswith(b"HTTP/1.1 503") and b"\r\nconnection: close\r\n" in with_body
    *refused, healthz = answers
    for answer in refused:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"\r\nretry-after: 2\r\n" in head and b"\r\nconnection: close\r\n" in head
        assert body == b'{"error":"server busy; retry later"}'
    assert healthz.startswith(b"HTTP/1.1 200")  # never refused
    assert _refused_total(server) - before == 252
    # The loop keeps up again: served.
    deadline = time.monotonic() + DEADLINE
    while meter.lagging and time.monotonic() < deadline:
        time.sleep(TICK)
    assert asyncio.run(_flood(server.port, [poll]))[0].startswith(b"HTTP/1.1 200")


def test_idle_connections_do_not_make_a_late_loop_overloaded(server: InProcessServer) -> None:
    server.publish(1)
    host = server.enroll("ws-1")
    poll = (
        f"GET {API}/policy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {host['node_key']}\r\n\r\n".encode()
    )
    meter = _meter(server)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) for _ in range(300)]
    try:
        meter.max_lag = -1.0  # always late: only what was answered meanwhile decides
        deadline = time.monotonic() + DEADLINE
        while not meter.lagging and time.monotonic() < deadline:
            time.sleep(TICK)
        assert not meter.overloaded()  # 300 open connections, more than 4 x the in-flight cap
        answers = asyncio.run(_flood(server.port, [poll] * 5))
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:40] for a in answers]
    finally:
        meter.max_lag = 60.0
        for sock in idle:
            sock.close()


def test_waiting_connections_are_taken_in_a_batch_not_one_a_turn(server: InProcessServer) -> None:
    """libuv accepts one connection per event-loop turn; connections waiting in the accept queue
    are all taken at the next turn instead. Counted in turns of a loop made slow, not in time."""
    health = f"GET {API}/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    loop = _meter(server)._loop
    assert loop is not None
    turns = [0]
    running = [True]

    def slow_turn() -> None:  # every turn of the server's loop lasts at least 20 ms
        turns[0] += 1
        time.sleep(0.02)
        if running[0]:
            loop.call_soon(slow_turn)

    loop.call_soon_threadsafe(slow_turn)
    socks: list[socket.socket] = []
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
            sock.sendall(health)
            socks.append(sock)
        sent_at = turns[0]
        answers = [_read_all(sock) for sock in socks]
        answered_at = turns[0]
    finally:
        running[0] = False
        for sock in socks:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:40] for a in answers]
    # One a turn would take about 100 turns for what was queued when the last was sent.
    assert answered_at - sent_at <= 20, (sent_at, answered_at)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_the_accept_queue_is_counted_and_drained_exactly() -> None:
    """The connections waiting are counted (TCP_INFO), at most the batch; the Acceptor takes that
    many -- no accept that finds none -- and starts each with a protocol of its own, holding
    nothing once they are started."""
    made: list[asyncio.BaseTransport] = []

    class _Made(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

    async def drained(listener: socket.socket, batch: int) -> tuple[int, int, int]:
        acceptor = Acceptor([(listener.fileno(), int(listener.family))], _Made, None, batch)
        acceptor.drain()
        for _ in range(10):  # connection_made is called soon, then the start completes
            await asyncio.sleep(0)
        for transport in made:
            transport.close()
        return len(made), queued(listener, 1000), len(acceptor.tasks)

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as listener:
            listener.bind((host, 0))
            listener.listen(64)
            clients = [socket.create_connection(listener.getsockname()[:2]) for _ in range(7)]
            try:
                assert queued(listener, 1000) == 7 and queued(listener, 3) == 3
                made.clear()
                assert _run(drained(listener, 3)) == (3, 4, 0)
                made.clear()
                assert _run(drained(listener, 100)) == (4, 0, 0)
            finally:
                for client in clients:
                    client.close()


def test_a_connection_that_fails_to_start_is_dropped_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> asyncio.Protocol:
        raise RuntimeError("no protocol")

    async def drained(listener: socket.socket) -> int:
        acceptor = Acceptor([(listener.fileno(), int(listener.family))], broken, None, 8)
        acceptor.drain()  # (each start fails inside uvloop's connect_accepted_socket)
        await asyncio.sleep(0)
        return len(acceptor.tasks)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
        try:
            with caplog.at_level("DEBUG", logger="server_stub.listener"):
                assert _run(drained(listener)) == 0
            assert queued(listener, 100) == 0  # taken
        finally:
            for client in clients:
                client.close()
    assert caplog.text.count("failed to start: no protocol") == 2


def _run(coro: Any) -> Any:
    import uvloop  # (serve's loop)

    return uvloop.run(coro)
