"""Overload refused at the listener: while the event loop lags, a new connection gets 503 at once.

The in-flight cap (server_stub/admission.py) sees a request only once the event loop has read
it. A flood of new connections -- each answered from memory, so never many in progress -- can
still outrun the loop: connections then wait in the kernel's accept queue and in the loop's
backlog, and the agents time out before anything refuses them. So the loop's lag is measured (a
timer that should fire every TICK seconds: how late it runs), and while it is over `max_lag`,
with at least `min_load` connections open (4 x the in-flight cap; fewer clients cannot queue much
however fast they send: each waits for its answers) and at least as many requests answered since
the tick before (a flood keeps the loop late with answering, where one pause -- a gc pass, a
starved machine -- leaves it late with little answered, however many idle keep-alive connections
a large fleet holds), a connection accepted is not given to the HTTP server: its
first request is answered with the same 503 + Retry-After the in-flight cap sends (and
Connection: close), by a small protocol that parses nothing but the request line. That costs a
fraction of serving the request, so the loop catches up and the refused agents come back after
Retry-After. /healthz is still served (the connection is handed to the HTTP server). Counted like
the cap's refusals (reason "overload"). A request on a connection already open is refused the
same way meanwhile (server_stub/nodeprotocol.py, or the app's first layer, through Admission).

Wired as uvicorn's `http` protocol factory (server_stub/cli.py); the app's lifespan starts the
meter and hands it over in the lifespan state (LISTENER_STATE), with the app's first layer
(FRONT_DOOR_STATE). A connection that is not refused gets the protocol that answers a node's
hot requests in the parser's callbacks (server_stub/nodeprotocol.py), unless httptools is
missing or ENDPOINT_SERVER_NODE_PROTOCOL=off: then uvicorn's own.

Connections waiting to be accepted are taken in a batch (Acceptor): uvloop's libuv takes one per
event-loop turn, and a turn under load is long (ENDPOINT_SERVER_ACCEPT_BATCH=0: one a turn). As
many are taken as the kernel counts waiting (an accept that finds none costs more than a
connection's start), each started without a task.
"""

from __future__ import annotations

import _socket
import asyncio
import functools
import logging
import os
import socket
import struct
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from server_stub.admission import REFUSAL_BODY, RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)

LISTENER_STATE = "endpoint.listener"
FRONT_DOOR_STATE = "endpoint.front_door"
NODE_PROTOCOL_ENV = "ENDPOINT_SERVER_NODE_PROTOCOL"  # "off": uvicorn's own protocol for every connection
ACCEPT_BATCH_ENV = "ENDPOINT_SERVER_ACCEPT_BATCH"  # connections taken per accept (0: libuv's one a turn)
ACCEPT_BATCH = 256
TICK = 0.025  # 40 wake-ups a second: about 0.4 % of a core on an idle server
REQUEST_WAIT = 2.0  # a refused connection that sends nothing is closed after this
_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"})
_REFUSAL_HEAD = (
    "HTTP/1.1 503 Service Unavailable\r\n"
    f"retry-after: {RETRY_AFTER_SECONDS}\r\nconnection: close\r\n"
    f"content-length: {len(REFUSAL_BODY)}\r\ncontent-type: application/json\r\n"
).encode()


class LoopLag:
    """How late the event loop runs a timer; `lagging` while that exceeds `max_lag`."""

    def __init__(
        self,
        max_lag: float,
        min_load: int,
        unexempt: Callable[[bytes], bool],
        on_refused: Callable[[str | None], None],
    ) -> None:
        self.max_lag = max_lag
        # Lag alone may be a pause (gc) or a starved machine; a flood also keeps the loop answering.
        self.min_load = min_load
        self.unexempt = unexempt  # whether a request line's path may be refused
        self.on_refused = on_refused  # (method or None): counts a refusal
        self.lagging = False
        self.lag = 0.0
        self.answered = 0  # requests answered between the last two ticks
        self.server_state: Any = None  # uvicorn's (protocol_factory): its connections, its answers
        self._answers_then = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def overloaded(self) -> bool:
        """Lagging, with at least `min_load` connections open and answers meanwhile: refuse what
        arrives (new connections here, requests on open ones: server_stub/nodeprotocol.py, frontdoor.py)."""
        if not self.lagging or self.answered < self.min_load:
            return False
        return self.server_state is not None and len(self.server_state.connections) >= self.min_load

    def start(self) -> None:
        """In the event loop (the app's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + TICK
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.lagging = False

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.lag = now - self._due
        self.lagging = self.lag > self.max_lag
        if self.server_state is not None:
            answers = self.server_state.total_requests
            self.answered, self._answers_then = answers - self._answers_then, answers
        self._due = now + TICK
        self._handle = self._loop.call_at(self._due, self._tick)


def protocol_factory(
    config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None
) -> asyncio.Protocol:
    """uvicorn's `http` setting: its own HTTP protocol, or the refusal while the loop lags. Called
    as the listener accepts a connection: the rest of the accept queue is taken meanwhile."""
    protocol = _protocol(config, server_state, app_state, _loop)
    acceptor = _ACCEPTORS.get(server_state, _UNKNOWN)
    if acceptor is _UNKNOWN:
        acceptor = _ACCEPTORS[server_state] = Acceptor.find(
            config, lambda: _protocol(config, server_state, app_state, None)
        )
    if acceptor is not None:
        acceptor.drain()
    return protocol


def _protocol(config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any) -> asyncio.Protocol:
    meter: LoopLag | None = app_state.get(LISTENER_STATE)
    if meter is not None:
        meter.server_state = server_state
        if meter.overloaded():
            return _Refusal(meter, lambda: _http(config, server_state, app_state, _loop), server_state)
    return _http(config, server_state, app_state, _loop)


def _http(config: Any, server_state: Any, app_state: dict[str, Any], loop: Any) -> asyncio.Protocol:
    door = app_state.get(FRONT_DOOR_STATE)
    node_protocol = _node_protocol() if door is not None else None
    if node_protocol is not None:
        return node_protocol(config, server_state, app_state, loop, door=door)
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    protocol: asyncio.Protocol = AutoHTTPProtocol(  # type: ignore[call-arg]
        config=config, server_state=server_state, app_state=app_state, _loop=loop
    )
    return protocol


class Acceptor:
    """Takes the connections waiting in the listening socket's accept queue, at most `batch` at a
    time, each given to uvloop as an accepted socket with a protocol from `make`.

    libuv (uvloop's, since 1.45) accepts ONE connection per event-loop turn. Under load a turn
    handles every ready connection -- tens of milliseconds, more while the machine is starved --
    so new connections wait in the kernel's accept queue for seconds (hundreds queued, ~50 taken
    a second: agents time out with no drop counted anywhere), while requests on kept connections
    are answered. `drain` runs as libuv accepts its one (protocol_factory, below): the listening
    socket is open then, and it runs once a turn while connections wait.
    """

    def __init__(
        self, listeners: list[tuple[int, int]], make: Callable[[], asyncio.Protocol], ssl: Any, batch: int
    ) -> None:
        self.listeners = listeners  # (file descriptor, address family): uvicorn's listening sockets
        self.make = make
        self.ssl = ssl
        self.batch = batch
        self.tasks: set[Coroutine[Any, Any, Any]] = set()  # connections being started

    @classmethod
    def find(cls, config: Any, make: Callable[[], asyncio.Protocol]) -> Acceptor | None:
        """For uvicorn's listening sockets on config.port (found among this process's open files);
        None when there is nothing to find (a Unix socket, port 0, no /proc) or it is turned off."""
        batch = _batch_setting()
        if batch <= 0 or getattr(config, "uds", None) or getattr(config, "fd", None) is not None:
            return None
        port = getattr(config, "port", 0)
        listeners = _listening_sockets(port) if port else []
        return cls(listeners, make, getattr(config, "ssl", None), batch) if listeners else None

    def drain(self) -> None:
        # The C socket type, not socket.socket: a Python accept() (enum conversions of the family
        # and type, a socket object per attempt) cost more than the connection's own start.
        for fd, family in self.listeners:
            listener = _socket.socket(family, socket.SOCK_STREAM, 0, fd)  # uvicorn's: not closed here
            try:
                for _ in range(queued(listener, self.batch)):
                    try:
                        conn_fd, _address = listener._accept()  # type: ignore[attr-defined]
                    except (BlockingIOError, InterruptedError):
                        break  # the queue is empty
                    except ConnectionAbortedError:
                        continue
                    except OSError as exc:  # out of file descriptors: libuv's own accept sheds the load
                        log.warning("accepting a connection: %s", exc)
                        break
                    self._start(socket.socket(family, socket.SOCK_STREAM, 0, conn_fd))
            finally:
                listener.detach()

    def _start(self, conn: socket.socket) -> None:
        """uvloop's connect_accepted_socket, driven by hand: it makes the transport and waits for
        connection_made; a task per connection (and its steps) cost a third of the start."""
        conn.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            starting = loop.connect_accepted_socket(self.make, conn, ssl=self.ssl)
        except Exception:
            conn.close()
            raise
        self._step(starting)

    def _step(self, starting: Coroutine[Any, Any, Any], waited: Any = None) -> None:
        try:
            waiting = starting.send(None)
        except StopIteration:
            self.tasks.discard(starting)
            return
        except (Exception, asyncio.CancelledError) as exc:  # (it closed the connection)
            self.tasks.discard(starting)
            log.debug("an accepted connection failed to start: %s", exc)
            return
        if not isinstance(waiting, asyncio.Future):  # (uvloop awaits only its waiter)
            starting.close()
            self.tasks.discard(starting)
            log.warning("an accepted connection could not be started: it awaited %r", waiting)
            return
        self.tasks.add(starting)  # until it has started: held here
        waiting.add_done_callback(functools.partial(self._step, starting))


_TCP_INFO = getattr(socket, "TCP_INFO", None)
_UNACKED = struct.Struct("=I")  # struct tcp_info's tcpi_unacked, at offset 24: a listener's accept queue


def queued(listener: Any, most: int) -> int:
    """How many connections wait in this listening socket's accept queue, at most `most` (Linux:
    TCP_INFO); `most` when that cannot be read. An accept that finds none costs ~8 us on this
    kind of VM, four times reading the count -- and the queue is mostly empty: once a turn."""
    if _TCP_INFO is None:
        return most
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 32)
    except OSError:
        return most
    if len(info) < 28:
        return most
    return min(most, int(_UNACKED.unpack_from(info, 24)[0]))


def _batch_setting() -> int:
    raw = os.environ.get(ACCEPT_BATCH_ENV, "")
    try:
        return int(raw) if raw else ACCEPT_BATCH
    except ValueError:
        return ACCEPT_BATCH


def _listening_sockets(port: int) -> list[tuple[int, int]]:
    """This process's listening TCP sockets bound to `port`: (descriptor, family)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                and sock.getsockname()[1] == port
            ):
                found.append((fd, int(sock.family)))
        except OSError:
            pass
        finally:
            sock.detach()
    return found


_UNKNOWN: Any = object()
_ACCEPTORS: weakref.WeakKeyDictionary[Any, Acceptor | None] = weakref.WeakKeyDictionary()  # by server_state

_NODE_PROTOCOL: list[Any] = []  # [the class, or None]: looked up once


def _node_protocol() -> Any:
    if not _NODE_PROTOCOL:
        found: Any = None
        if os.environ.get(NODE_PROTOCOL_ENV, "").lower() != "off":
            try:
                from server_stub.nodeprotocol import NodeProtocol
            except ImportError:  # no httptools: uvicorn's h11 protocol, the first layer answers
                pass
            else:
                found = NodeProtocol
        _NODE_PROTOCOL.append(found)
    return _NODE_PROTOCOL[0]


class _Refusal(asyncio.Protocol):
    """Reads the request line; answers 503 and closes (or hands /healthz to the HTTP server)."""

    def __init__(self, meter: LoopLag, http: Callable[[], asyncio.Protocol], server_state: Any) -> None:
        self.meter = meter
        self.http = http
        self.server_state = server_state
        self.transport: Any = None  # an asyncio.Transport (uvloop's is not a subclass)
        self.head = b""
        self.answered = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(REQUEST_WAIT, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # the rest of a refused request: dropped
        self.head += data
        line_end = self.head.find(b"\r\n")
        if line_end < 0:
            if len(self.head) > 8192:
                self._close()
            return
        method, _, rest = self.head[:line_end].partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if not self.meter.unexempt(path):
            self._hand_over()
            return
        self.answered = True
        self.meter.on_refused(method.decode("ascii") if method in _METHODS else None)
        date = b"".join(b"%s: %s\r\n" % pair for pair in self.server_state.default_headers)
        self.transport.write(_REFUSAL_HEAD + date + b"\r\n" + REFUSAL_BODY)
        self.server_state.total_requests += 1  # an answer, as uvicorn counts them
        if self.transport.can_write_eof():
            self.transport.write_eof()  # FIN after the answer; closed when the client closes
        else:
            self._close()

    def _hand_over(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        protocol = self.http()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self.head)

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport.close()
