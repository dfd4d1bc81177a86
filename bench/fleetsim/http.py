"""A minimal HTTP/1.1 client on asyncio protocols: what the simulator sends is cheap to send.

    conn = await Connection.open(loop, "127.0.0.1", 8080, timeout=15.0)
    answer = await conn.request(b"GET", "/api/v1/policy", {"If-None-Match": etag})
    answer.status, answer.header(b"etag"), answer.body
    conn.close()

One request at a time per connection, kept alive until closed (or until the server closes it).
Bodies by Content-Length or chunked. A request that has no complete answer after `timeout`
seconds (counted from the request, connecting included when `open` is given the same budget)
fails with `Timeout`, and its connection is closed; a closed or refused connection is
`ConnectionError`. Loopback only: `open` refuses any other address.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Timeout(Exception):
    """No complete answer in time."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: bytes  # the raw header block (lower-cased), searched on demand
    body: bytes

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
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, proto: _Protocol, timeout: float) -> None:
        self._loop = loop
        self._host_header = host.encode("ascii")
        self._proto = proto
        self.timeout = timeout

    @classmethod
    async def open(
        cls, loop: asyncio.AbstractEventLoop, host: str, port: int, *, timeout: float
    ) -> Connection:
        _check_loopback(host)
        # A connected socket handed over: create_connection(host=...) would resolve the name
        # (getaddrinfo in a thread) on every call, which costs more than the request.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
                _transport, proto = await loop.create_connection(_Protocol, sock=sock)
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
        proto = self._proto
        if proto.closed or proto.transport is None:
            raise ConnectionError("connection closed")
        lines = [method, b" ", path.encode("ascii"), b" HTTP/1.1\r\nHost: ", self._host_header, b"\r\n"]
        for name, value in headers.items():
            lines += [name.encode("ascii"), b": ", value.encode("latin-1"), b"\r\n"]
        if body or method == b"POST":
            lines += [b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n"]
        lines += [b"\r\n", body]
        waiter: asyncio.Future[Answer] = self._loop.create_future()
        proto.waiter = waiter
        proto.transport.write(b"".join(lines))
        timer = self._loop.call_later(self.timeout, _expire, waiter)
        try:
            return await waiter
        except Timeout:
            self.close()
            raise
        finally:
            timer.cancel()
            proto.waiter = None


@functools.cache
def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the fleet simulator talks to loopback only, not {host}")


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(Timeout("no answer in time"))


__all__ = ["Answer", "Connection", "Timeout"]
