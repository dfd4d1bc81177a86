"""A minimal HTTP/1.1 client for the simulator: what it sends is cheap to send.

    raw = encode(b"GET", "/api/v1/policy", {"If-None-Match": etag})     # encode once, send often
    answer = await exchange(loop, "127.0.0.1", 8080, raw, timeout=15.0)  # a new connection, closed after
    conn = await Connection.open(loop, "127.0.0.1", 8080, timeout=15.0)  # or keep-alive:
    answer = await conn.send(raw)
    answer.status, answer.header(b"etag"), answer.body
    conn.close()

`exchange` is the agent's usual request (at 60 s intervals every poll opens a connection): a
non-blocking socket, the request written as soon as connect returns, the answer read by a
reader callback; no transport, no protocol object, about a third of the CPU of asyncio's
connection machinery per request. `Connection` keeps one connection for many requests, one at a
time. Bodies by Content-Length or chunked. A request that has no complete answer after `timeout`
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


async def exchange(
    loop: asyncio.AbstractEventLoop, host: str, port: int, raw: bytes, *, timeout: float
) -> Answer:
    """Send `raw` on a new connection and return the answer; the connection is closed after."""
    _check_loopback(host)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    fd = sock.fileno()
    waiter: asyncio.Future[Answer] = loop.create_future()
    buf = bytearray()
    pending = memoryview(raw)

    def fail(exc: BaseException) -> None:
        if not waiter.done():
            waiter.set_exception(exc)

    def readable() -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            fail(ConnectionError(f"connection failed: {exc}"))
            return
        if not data:
            fail(ConnectionError("connection closed by the server"))
            return
        buf.extend(data)
        answer = _parse(buf)
        if answer is not None and not waiter.done():
            waiter.set_result(answer)

    def writable() -> None:
        nonlocal pending
        try:
            sent = sock.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # refused, reset: connect's outcome shows here
            fail(ConnectionError(f"connection failed: {exc}"))
            return
        pending = pending[sent:]
        if not pending:
            loop.remove_writer(fd)

    code = sock.connect_ex((host, port))
    reading = writing = False
    timer = loop.call_later(timeout, _expire, waiter)
    try:
        if code not in (0, errno.EINPROGRESS):
            raise ConnectionError(f"connect to {host}:{port}: {errno.errorcode.get(code, code)}")
        # On loopback the handshake is usually done when connect returns: write at once, else
        # when the socket is writable.
        try:
            pending = pending[sock.send(pending) :]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise ConnectionError(f"connection failed: {exc}") from exc
        if pending:
            loop.add_writer(fd, writable)
            writing = True
        loop.add_reader(fd, readable)
        reading = True
        return await waiter
    finally:
        timer.cancel()
        if writing:
            loop.remove_writer(fd)
        if reading:
            loop.remove_reader(fd)
        sock.close()


@functools.cache
def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the fleet simulator talks to loopback only, not {host}")


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(Timeout("no answer in time"))


__all__ = ["Answer", "Connection", "Timeout", "encode", "exchange", "head", "with_body"]
