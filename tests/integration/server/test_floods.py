"""The server holds against unauthenticated floods (the real server under uvicorn, raw sockets).

Who calls is decided from the headers before a byte of the body is read; rate limits count the
principal, not how its header is spelled; failed attempts count against the client's address; a
trickled body is cut off by --body-timeout; slow unauthenticated uploads hold no body in memory.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.server import API, LiveServer, run_server


@pytest.fixture
def tight_server(tmp_path: Path) -> Iterator[LiveServer]:
    # The gate's answers, not overload's: no 503 for 300 open sockets on a busy test machine.
    args = ["--rate-limit", "0.5", "--rate-burst", "10", "--body-timeout", "2", "--max-loop-lag", "0"]
    with run_server(tmp_path / "server", extra_args=args) as server:
        yield server


def connect(server: LiveServer) -> socket.socket:
    parts = urlsplit(server.base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
    return sock


def head(path: str, length: int, token: str | None) -> bytes:
    lines = [f"POST {API}{path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset) after its answer."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    return True


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def spellings(n: int) -> list[str]:
    """n distinct spellings of the scheme 'Bearer' (upper/lower case of each letter, then spaces)."""
    out = []
    for i in range(n):
        word = "".join(ch.upper() if (i >> k) & 1 else ch.lower() for k, ch in enumerate("bearer"))
        out.append(word + " " * (1 + i // 64))
    return out


def test_spellings_of_bearer_share_one_principals_limit(tight_server: LiveServer) -> None:
    statuses = []
    with httpx.Client(base_url=tight_server.api_url, timeout=30) as c:
        for scheme in spellings(300):
            headers = {"Authorization": f"{scheme}{tight_server.reader_token}"}
            statuses.append(c.get("/hosts", headers=headers).status_code)
    assert set(statuses) <= {200, 429}
    # The burst (10) and what 0.5/s refills meanwhile: far fewer than 300.
    assert statuses.count(200) < 60, statuses.count(200)
    assert statuses[:5] == [200] * 5


def test_random_tokens_are_limited_by_address_before_any_lookup(tight_server: LiveServer) -> None:
    statuses = []
    with httpx.Client(base_url=tight_server.api_url, timeout=30) as c:
        for _ in range(1000):
            r = c.get("/hosts", headers={"Authorization": f"Bearer {secrets.token_urlsafe(32)}"})
            statuses.append(r.status_code)
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) < 60, statuses.count(401)  # the rest never reached the database
    # The flood from this address does not lock out a real principal from it.
    with tight_server.reader() as c:
        assert c.get("/hosts").status_code == 200


def test_unknown_credentials_are_refused_before_the_body(tight_server: LiveServer) -> None:
    """Headers announce 1 MB that never comes: the answer is 401 without waiting for it."""
    for token in (None, "not-a-key-" + secrets.token_urlsafe(8)):
        with contextlib.closing(connect(tight_server)) as sock:
            sock.sendall(head("/events", 1_000_000, token))
            assert status_of(sock) == 401


def test_a_trickled_body_is_cut_off(tight_server: LiveServer) -> None:
    host = tight_server.enroll("ws-slow")
    with contextlib.closing(connect(tight_server)) as sock:
        sock.sendall(head("/events", 1000, host.node_key) + b'{"events": [')
        assert status_of(sock) == 408  # never sends the rest: --body-timeout answers


def test_slow_unauthenticated_uploads_hold_no_memory(tight_server: LiveServer) -> None:
    """300 uploads announcing 1 MB each and trickling it: answered at the headers, nothing kept."""
    before = rss_kib(tight_server.pid)
    socks = []
    try:
        for _ in range(300):
            sock = connect(tight_server)
            socks.append(sock)
            sock.sendall(head("/events", 1_000_000, None) + b"[" * 1024)
        for _round in range(32):  # the trickle (128 KiB each) goes on; a refused upload has nowhere to go
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"[" * 4096)
        answered = closed = 0
        for sock in socks:
            with contextlib.suppress(OSError, IndexError, ValueError):
                answered += status_of(sock) in (401, 429)
                closed += closed_by_server(sock)  # the socket times out (fails) if the server waits
        grown = rss_kib(tight_server.pid) - before
    finally:
        for sock in socks:
            sock.close()
    assert answered == 300 and closed == 300, (answered, closed)
    # 300 connections' bookkeeping; the 38 MB trickled in was never kept.
    assert grown < 32 * 1024, f"server RSS grew by {grown} KiB"
