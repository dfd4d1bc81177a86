"""A minimal HTTP/1.1 client for the simulator: what it sends is cheap to send.

    raw = encode(b"GET", "/api/v1/policy", {"If-None-Match": etag})     # encode once, send often
    answer = await exchange(loop, "127.0.0.1", 8080, raw, timeout=15.0)  # a new connection, closed after
    sock = Socket(loop, "127.0.0.1", 8080)                               # an agent's: kept between
    answer = await sock.request(raw, timeout=15.0)                       #   requests while fresh
    conn = await Connection.open(loop, "127.0.0.1", 8080, timeout=15.0)  # or a protocol's:
    answer = await conn.send(raw)
    answer.status, answer.header(b"etag"), answer.body
    conn.close()

`Socket` is a connection as the agent's client holds one (bench/fleetsim/agent.py keeps one per
host while it is fresh) and `exchange` one request on a new connection: a non-blocking socket,
the request written as soon as connect returns, the answer read by a reader callback; no
transport, no protocol object, about a third of the CPU of asyncio's connection machinery.
`Connection` (asyncio's machinery) keeps one connection for many requests, one at a time.
Bodies by Content-Length or chunked. A request that has no complete answer after `timeout`
seconds (connecting included) fails with `Timeout` and its connection is closed; a closed or
refused connection is `ConnectionError`. Loopback only: any other address is refused.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
from collections.abc import Callable, Mapping
from typing import Any


class Timeout(Exception):
    """No complete answer in time."""


class Answer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: bytes, body: bytes) -> None:
        self.status = status
        self.headers = headers  # the raw header block (lower-cased), searched on demand
        self.body = body

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.headers!r}, {self.body[:80]!r})"

    def header(self, name: bytes) -> str | None:
        """The value of header `name` (lower case, without the colon), or None."""
        key = b"\r\n" + name + b":"
        start = self.headers.find(key)
        if start < 0:
            return None
        start += len(key)
        end = self.headers.find(b"\r\n", start)
        return self.headers[start : end if end >= 0 else None].strip().decode("latin-1")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None  # an asyncio.Transport (uvloop's is not a subclass)
        self.buf = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            answer = _parse(self.buf)
            if answer is not None:
                self.waiter.set_result(answer)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc or 'by the server'}"))


def _parse(buf: bytearray) -> Answer | None:
    """A complete answer at the start of `buf` (removed from it), or None while incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower() + b"\r\n"
    status = int(head[9:12])
    body_start = end + 4
    length_at = head.find(b"\r\ncontent-length:")
    if length_at >= 0:
        value_end = head.find(b"\r\n", length_at + 2)
        length = int(head[length_at + 17 : value_end])
        if len(buf) < body_start + length:
            return None
        body = bytes(buf[body_start : body_start + length])
        del buf[: body_start + length]
        return Answer(status, head, body)
    if b"\r\ntransfer-encoding: chunked" in head:
        return _parse_chunked(buf, status, head, body_start)
    del buf[:body_start]  # 204, 304, or no body announced
    return Answer(status, head, b"")


def _parse_chunked(buf: bytearray, status: int, head: bytes, pos: int) -> Answer | None:
    parts = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        if len(buf) < line_end + 2 + size + 2:
            return None
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            del buf[: trailer_end + 4]
            return Answer(status, head, b"".join(parts))
        parts.append(bytes(buf[line_end + 2 : line_end + 2 + size]))
        pos = line_end + 2 + size + 2


class Connection:
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, proto: Any, timeout: float) -> None:
        self._loop = loop
        self._host_header = host.encode("ascii")
        self._proto = proto
        self.timeout = timeout

    @classmethod
    async def open(
        cls, loop: asyncio.AbstractEventLoop, host: str, port: int, *, timeout: float,
        protocol: Callable[[], asyncio.Protocol] | None = None,
    ) -> Connection:  # fmt: skip
        """A connection; `protocol` to handle it yourself (then only close() is of use here)."""
        _check_loopback(host)
        # A connected socket handed over: create_connection(host=...) would resolve the name
        # (getaddrinfo in a thread) on every call, which costs more than the request.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
                _transport, proto = await loop.create_connection(protocol or _Protocol, sock=sock)
        except TimeoutError as exc:
            sock.close()
            raise Timeout(f"connect to {host}:{port}") from exc
        except BaseException:
            sock.close()
            raise
        return cls(loop, f"{host}:{port}", proto, timeout)

    @property
    def usable(self) -> bool:
        return not self._proto.closed

    def close(self) -> None:
        if self._proto.transport is not None:
            self._proto.transport.close()

    async def request(
        self, method: bytes, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Answer:
        return await self.send(encode(method, path, headers, body, host=self._host_header))

    async def send(self, raw: bytes) -> Answer:
        """Send one encoded request (`encode`) and wait for its answer."""
        proto = self._proto
        if proto.closed or proto.transport is None:
            raise ConnectionError("connection closed")
        waiter: asyncio.Future[Answer] = self._loop.create_future()
        proto.waiter = waiter
        proto.transport.write(raw)
        timer = self._loop.call_later(self.timeout, _expire, waiter)
        try:
            return await waiter
        except Timeout:
            self.close()
            raise
        finally:
            timer.cancel()
            proto.waiter = None


def encode(
    method: bytes, path: str, headers: Mapping[str, str], body: bytes = b"", *, host: bytes = b"127.0.0.1"
) -> bytes:
    """One request as sent on the wire (a body gets its Content-Length; so does any POST)."""
    return with_body(head(method, path, headers, host=host), body, post=method == b"POST")


def head(method: bytes, path: str, headers: Mapping[str, str], *, host: bytes = b"127.0.0.1") -> bytes:
    """The request line and headers, without the Content-Length and the blank line: kept for a
    request sent again with another body (`with_body`)."""
    lines = [method, b" ", path.encode("ascii"), b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in headers.items():
        lines += [name.encode("ascii"), b": ", value.encode("latin-1"), b"\r\n"]
    return b"".join(lines)


def with_body(head: bytes, body: bytes, *, post: bool = True) -> bytes:
    if body or post:
        return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
    return head + b"\r\n"


class Socket:
    """One connection as an agent's HTTP client holds it: requests one at a time, and between
    them left open (httpx keeps an idle connection for 5 s; the server closes it after its own
    keep-alive timeout). Watched while idle: the server's close is seen and the socket closed,
    as httpx finds it closed before reusing it. No transport, no protocol object: a non-blocking
    socket, the request written as soon as connect returns, the answer read by a reader callback.

        sock = Socket(loop, "127.0.0.1", 8080)     # connecting (loopback only)
        answer = await sock.request(raw, timeout=15.0)
        sock.closed, sock.idle_since               # reuse it while open and recently used
        sock.close()
    """

    __slots__ = (
        "_buf", "_fd", "_loop", "_opened", "_pending", "_sock", "_waiter", "_writing", "closed", "handshake",
        "idle_since",
    )  # fmt: skip

    def __init__(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, source: str | None = None
    ) -> None:
        _check_loopback(host)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if source is not None:  # the machine's own address (source_address): its own ports
                if not source.startswith("127."):  # source_address's are, by construction
                    _check_loopback(source)
                sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)  # the port picked at connect
                sock.bind((source, 0))
            code = sock.connect_ex((host, port))
        except OSError:
            sock.close()
            raise
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise ConnectionError(f"connect to {host}:{port}: {errno.errorcode.get(code, code)}")
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._buf = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._pending = memoryview(b"")
        self._writing = False
        self.closed = False
        self._opened = self.idle_since = loop.time()
        # Seconds until the first bytes could be sent (the handshake); -1 until then. About 1 s
        # or more: the server's accept queue was full and the SYN had to be sent again.
        self.handshake = -1.0
        loop.add_reader(self._fd, self._readable)

    async def request(self, raw: bytes, *, timeout: float) -> Answer:
        """Send `raw`, return its answer; on any failure (Timeout, ConnectionError) it is closed."""
        if self.closed:
            raise ConnectionError("connection closed")
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._pending = memoryview(raw)
        self._write()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            answer = await waiter
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
            self._waiter = None
        if b"\r\nconnection: close" in answer.headers:
            self.close()  # the server closes it after this answer
        self.idle_since = loop.time()
        return answer

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._sock.close()

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _write(self) -> None:
        try:
            sent = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            sent = 0  # on loopback the handshake is usually done when connect returns; else later
        except OSError as exc:  # refused, reset: connect's outcome shows here
            if exc.errno != errno.ENOTCONN:
                self._fail(ConnectionError(f"connection failed: {exc}"))
                return
            sent = 0
        if sent and self.handshake < 0:
            self.handshake = self._loop.time() - self._opened
        self._pending = self._pending[sent:]
        if self._pending and not self._writing:
            self._loop.add_writer(self._fd, self._write)
            self._writing = True
        elif not self._pending and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _readable(self) -> None:
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(ConnectionError(f"connection failed: {exc}"))
            return
        if not data:
            self._fail(ConnectionError("connection closed by the server"))
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: not a connection to reuse
            return
        self._buf += data
        answer = _parse(self._buf)
        if answer is not None:
            waiter.set_result(answer)


async def exchange(
    loop: asyncio.AbstractEventLoop, host: str, port: int, raw: bytes, *, timeout: float,
    source: str | None = None,
) -> Answer:  # fmt: skip
    """Send `raw` on a new connection (from `source`) and return the answer; closed after."""
    sock = Socket(loop, host, port, source)
    try:
        return await sock.request(raw, timeout=timeout)
    finally:
        sock.close()


def source_address(index: int) -> str:
    """A loopback address of its own for simulated machine `index` (127.1.0.0 onwards).

    Machines of a real fleet connect from their own addresses, each with its own ephemeral
    ports. From one address, a fleet opening ~1,000 connections a second with each closed one
    held 60 s in TIME_WAIT needs more than the 28,232 ports there are: the kernel then searches
    the port range on every connect (the simulator's CPU went there, and it fell behind), and a
    port it picks may still be held by the server's side of an older connection (the SYN is
    answered 1 s later)."""
    return str(ipaddress.IPv4Address(_FIRST_SOURCE + index % _SOURCES))


_FIRST_SOURCE = int(ipaddress.IPv4Address("127.1.0.0"))
_SOURCES = 254 * 65536  # 127.1.0.0 to 127.254.255.255
_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2


@functools.cache
def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the fleet simulator talks to loopback only, not {host}")


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(Timeout("no answer in time"))


__all__ = [
    "Answer", "Connection", "Socket", "Timeout", "encode", "exchange", "head", "source_address", "with_body",
]  # fmt: skip
