"""A node's poll and heartbeat answered in the HTTP parser's callbacks; overload refused there.

uvicorn's httptools protocol gives every request a RequestResponseCycle, an asyncio task, ASGI
message dicts and the application's layers. This subclass of it looks at each request as soon as
its head is parsed (httptools' on_headers_complete) and, when the connection is idle (no answer
of the application pending, nothing queued behind one, the transport not pushing back):

- while the event loop lags under a flood (server_stub/admission.py), a request (but /healthz)
  is refused 503 + Retry-After right there, before any task exists; so is one past the in-flight
  cap, but a node's poll or heartbeat (answered from memory it takes no slot);
- a node's GET /policy and POST /heartbeat, its key held in memory, are decided by the first
  layer's own decisions (server_stub/frontdoor.py: FrontDoor.node, admit, poll, beat) and the
  answer is written to the transport from the callback: no task, no ASGI message. A heartbeat's
  body (a Content-Length of at most BODY_MAX) is gathered in on_body, judged in
  on_message_complete; not whole within --body-timeout: the 408 the first layer gives.
- an enrollment with the fleet's enroll secret is taken the same way by EnrollDoor's decisions
  (server_stub/enrollserve.py) and queued for its group commit; its answer is written when the
  group is settled. Meanwhile it is the connection's request in progress (a RequestResponseCycle
  that runs no task stands for it): a request pipelined behind it waits in uvicorn's pipeline, a
  graceful shutdown closes after its answer, a client that leaves takes it out of the queue if its
  group has not been taken yet. It is not counted in flight: it holds no thread and costs no CPU
  while it waits, and the group commit bounds its own queue (503 past it); counted, a fleet
  enrolling 200 at a time kept the cap full and was refused a third of its attempts.

A poll answered 304 here is remembered by its exact bytes (PollMemo): the same bytes read again,
with the parser between requests, are that request again and are answered without httptools'
callbacks or the decisions' parsing -- by what the answer rested on, taken again (the flood check,
the host's contact, its rate limit; the key cache, the served versions and the watcher's
freshness as they were, else forgotten). A connection all of whose requests were remembered never
makes a parser; one's attributes are copied from its server's first connection (uvicorn looks two
loggers up for each), the settings read again.

Everything else -- and whatever those decisions leave to the route (a heartbeat that does not
validate, a policy copy to load first, no policy for the host) -- goes on through uvicorn's own
code unchanged, to the application (a request handed on after its key was identified and its
rate limit taken carries its principal in the scope: not counted twice). A pipelined request
waits for the answers before it (only an idle connection is answered here), a request after a
closing answer is not read, HTTP/1.0 and Connection: close are closed after the answer.

The bytes written are those uvicorn writes for the same ASGI messages (`render`;
tests/integration/server/test_node_protocol.py holds them equal and pins the parts of uvicorn's
protocol this relies on). ENDPOINT_SERVER_NODE_PROTOCOL=off serves with uvicorn's protocol alone
(the first layer then answers the same in ASGI): for a comparison, or should this ever misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    TRACE_LOG_LEVEL,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from server_stub.admission import REFUSAL_BODY, announces_body, refusal_headers
from server_stub.auth import Principal
from server_stub.enrollserve import ENROLL_DOOR_STATE, EnrollDoor, Enrolling
from server_stub.frontdoor import Answer, FrontDoor, NodeHead
from server_stub.middleware import UNLIMITED_PATHS

log = logging.getLogger(__name__)

BODY_MAX = 65536  # a heartbeat's body read here (a few hundred bytes in practice); larger: uvicorn's
# A request's line and headers, at most (httptools and uvicorn keep any amount): past it 400 and closed.
# Counted by what was read while a head was open, so a read that also ended a body counts too:
# a head is refused somewhere between HEAD_MAX - one read (256 KiB) and HEAD_MAX.
HEAD_MAX = 1024 * 1024
_UNLIMITED = frozenset(path.encode("ascii") for path in UNLIMITED_PATHS)

_UNREAD: Any = object()  # an address not read yet

# What the current request is to this protocol.
_PASSED = 0  # uvicorn's, as if this subclass were not there
_BEAT = 1  # a heartbeat whose body is being gathered here
_DONE = 2  # answered (or not to be read): the rest of it is dropped
_ENROLL = 3  # an enrollment whose body is being gathered here
# The message event of a request answered here later: set by uvicorn on a disconnect, never waited on.
_NO_WAITER = asyncio.Event()


def _answered() -> None:
    """An answered cycle's on_response: it no longer points back at its protocol."""


def render(
    default_headers: list[tuple[bytes, bytes]], answer: Answer, keep_alive: bool
) -> tuple[bytes, bool]:
    """(the bytes uvicorn writes for `answer`, whether the connection stays open after)."""
    parts = [STATUS_LINE[answer.status]]
    closing = False
    for headers in (default_headers, answer.headers):
        for name, value in headers:
            name = name.lower()
            if name == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]:
                keep_alive, closing = False, True
            parts += (name, b": ", value, b"\r\n")
    if not keep_alive and not closing:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", answer.body)
    return b"".join(parts), keep_alive


_REFUSED = Answer(503, refusal_headers(False), REFUSAL_BODY)
_REFUSED_CLOSING = Answer(503, refusal_headers(True), REFUSAL_BODY)
# (answer, keep-alive) -> (the default headers rendered with, bytes, kept open): uvicorn replaces
# its default headers (the Date) once a second.
_RENDERED: dict[tuple[int, bool], tuple[Any, bytes, bool]] = {}


def _rendered(
    default_headers: list[tuple[bytes, bytes]], answer: Answer, keep_alive: bool
) -> tuple[bytes, bool]:
    """render() of a constant answer, again only when the default headers changed."""
    key = (id(answer), keep_alive)
    hit = _RENDERED.get(key)
    if hit is None or hit[0] is not default_headers:
        data, kept = render(default_headers, answer, keep_alive)
        hit = _RENDERED[key] = (default_headers, data, kept)
    return hit[1], hit[2]


MEMO_BYTES = 4096  # a request remembered whole is at most this long (a node's poll: ~300 bytes)
MEMO_BUDGET = 32 * 1024 * 1024  # bytes of memory the remembered polls may hold; past it, it starts over
ENTRY_COST = 330  # an entry besides its request's bytes (measured: key object, tuple, strings, slot)
# What a remembered poll was answered from: (host id, its rate-limit key, the 304's headers, keep-alive).
_Remembered = tuple[str, str, tuple[tuple[bytes, bytes], ...], bool]


class PollMemo:
    """Polls answered 304 here, by their exact bytes: the same bytes again skip the parser.

    A request is remembered only when a whole read held exactly one request, begun with the
    parser between requests (the state every new connection starts in), and no more: httptools
    parsed it, the decisions answered it 304 from memory. The same bytes at the same parser state
    are the same request -- the same method, URL, headers (duplicates, case and all), keep-alive --
    so its answer is taken again from what it was decided on, where that still holds: the node key
    cache's epoch (bumped by every key change) and the served versions (a new tuple after each
    change) are those it was learnt under, and memory is trusted (the change feed is being read);
    the flood refusal, the host's contact time and its rate limit are taken again for each request.
    Anything else -- bytes not seen, a request split across reads or pipelined behind another, a
    connection with a request in progress -- goes through httptools as before. Per server: the
    entries hold strings and bytes only (nothing for the collector to walk once they age).

    Bounded by what it holds (MEMO_BUDGET: each request's bytes + ENTRY_COST), however many
    distinct requests a node sends: full, it starts over. A fleet whose polls need more than the
    budget (over ~50,000 hosts polling one server, at ~300 bytes a poll) gets fewer hits: a host's
    poll is parsed again once after each start-over before it is remembered again -- never dearer
    than without the memo (learning an entry is one dict insertion).

    The entries are requests' bytes: node keys included, in this process's memory while the entry
    lives (as a request's own buffers hold them while it is read); the database and the key cache
    still hold digests only.
    """

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.entries: dict[bytes, _Remembered] = {}
        self.held = 0  # bytes the entries hold (counted as in MEMO_BUDGET)
        self.rollouts: Any = None  # the served versions the entries were answered from
        self.epoch = -1  # the key cache's epoch they were learnt under
        self.headers: dict[Any, Any] = {}  # one tuple per distinct 304 header list
        self.rendered: dict[tuple[Any, bool], bytes] = {}
        self.rendered_with: Any = None  # the default headers (Date) they were rendered with

    def tags(self) -> tuple[Any, int]:
        """What a decision about to be taken rests on; read before it (a change meanwhile wins)."""
        ctx = self.door.ctx
        return ctx.policies.peek(), ctx.auth.keys.epoch

    def learn(self, data: bytes, tags: tuple[Any, int], remembered: _Remembered) -> None:
        rollouts, epoch = tags
        if rollouts is None:
            return
        cost = len(data) + ENTRY_COST
        if rollouts is not self.rollouts or epoch != self.epoch or self.held + cost > MEMO_BUDGET:
            self.forget()
            self.rollouts, self.epoch = rollouts, epoch
        if data in self.entries:
            return
        host_id, limit_key, headers, keep_alive = remembered
        headers = self.headers.setdefault(headers, headers)
        self.entries[data] = (host_id, limit_key, headers, keep_alive)
        self.held += cost

    def forget(self) -> None:
        self.entries.clear()
        self.held = 0

    def current(self) -> bool:
        """Whether the entries may still be answered from (else they are forgotten)."""
        ctx = self.door.ctx
        keys = ctx.auth.keys
        if ctx.policies.peek() is self.rollouts and keys.epoch == self.epoch and keys.fresh():
            return True
        self.forget()
        return False

    def render(self, default_headers: Any, headers: Any, keep_alive: bool) -> bytes:
        """The 304's bytes, rendered again only when the default headers (the Date) changed."""
        if default_headers is not self.rendered_with:
            self.rendered.clear()
            self.rendered_with = default_headers
            if len(self.headers) > 64:
                self.headers.clear()  # (kept by the entries that use them)
        data = self.rendered.get((headers, keep_alive))
        if data is None:
            data = render(default_headers, Answer(304, list(headers), b""), keep_alive)[0]
            self.rendered[(headers, keep_alive)] = data
        return data


class _PerServer:
    """What the connections of one server's door share, kept on the door (`door.node_protocol`):
    it lives and goes with the app -- a module-level map would keep every app ever served."""

    def __init__(self, door: Any) -> None:
        self.memo = PollMemo(door) if isinstance(door, FrontDoor) else None
        # The first connection's attributes, for the next ones: (server state, config, app
        # state, loop, attributes) -- see _template.
        self.template: tuple[Any, Any, Any, Any, dict[str, Any]] | None = None


def _per_server(door: Any) -> _PerServer:
    shared: _PerServer | None = getattr(door, "node_protocol", None)
    if shared is None:
        shared = door.node_protocol = _PerServer(door)
    return shared


def _memo_of(door: FrontDoor) -> PollMemo | None:
    return _per_server(door).memo


# A new connection's protocol starts as a copy of the first one's attributes: uvicorn's __init__
# looks up two loggers (the logging module's lock, twice) and reads its settings anew for every
# connection. Copied: what every connection of a server shares, and immutable values; each gets
# its own pipeline, parser (made when first needed: a remembered poll needs none), enrollments
# and body, and reads the settings again.
_OWN = frozenset(  # made or read for each connection
    {
        "pipeline", "enrolling", "body", "access_log", "app", "ws_protocol_class", "root_path",
        "asgi_version", "limit_concurrency", "timeout_keep_alive",
    }
)  # fmt: skip
_SHARED = frozenset(  # the server's: the same objects for each of its connections
    {
        "config", "loop", "logger", "access_logger", "app_state", "server_state", "connections", "tasks",
        "door", "enroll_door", "memo",
    }
)  # fmt: skip
_VALUES = (type(None), bool, int, float, str, bytes)


def _template(attributes: dict[str, Any]) -> dict[str, Any] | None:
    """What a new connection may copy; None when any attribute is unknown and mutable (then
    each connection is made by uvicorn's __init__, as before: uvicorn changed)."""
    copied = {}
    for name, value in attributes.items():
        if name in _OWN:
            continue
        if name not in _SHARED and not isinstance(value, _VALUES):
            return None
        copied[name] = value
    return copied


class NodeProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        door: FrontDoor,
    ) -> None:
        loop = _loop or asyncio.get_event_loop()
        shared = _per_server(door)
        template = shared.template
        if (
            template is not None
            and template[0] is server_state
            and template[1] is config
            and template[2] is app_state
            and template[3] is loop
        ):
            self.__dict__.update(template[4])
            # What uvicorn reads anew for each connection (a test may change a setting between two).
            self.app = config.loaded_app
            self.access_log = self.access_logger.hasHandlers()
            self.ws_protocol_class = config.ws_protocol_class
            self.root_path = config.root_path
            self.asgi_version = config.asgi_version
            self.limit_concurrency = config.limit_concurrency
            self.timeout_keep_alive = config.timeout_keep_alive
            self.pipeline = deque()
            # queued enrollments, cancelled if the client leaves
            self.enrolling: set[asyncio.Future[str | Exception]] = set()
            self.body = bytearray()
            return
        super().__init__(config, server_state, app_state, loop)
        self.parser = None  # type: ignore[assignment]  # made when needed (_parse)
        self.door = door
        self.poll_url = door.poll_path.encode("ascii")
        self.beat_url = door.beat_path.encode("ascii")
        self.enroll_door: EnrollDoor | None = app_state.get(ENROLL_DOOR_STATE)
        self.enrolling = set()
        # The current request, when this protocol holds it.
        self.state = _PASSED
        self.method = ""
        self.keep_alive = True
        self.principal: Principal | None = None
        self.head: NodeHead | None = None
        self.body = bytearray()
        self.body_timer: asyncio.TimerHandle | None = None
        self.answered = False  # since data last came in: the keep-alive timer is due
        self.head_open = False  # a request's head is being read
        self.head_read = 0  # bytes read while it was
        self.reading = False  # in data_received: uvicorn's cancel of the keep-alive timer is put off
        self.active_at = 0.0  # (loop time) of the last answer written here
        self.memo: PollMemo | None = shared.memo
        self.in_message = False  # a request begun and not complete: the parser is not between requests
        self.learning: bytes | None = None  # the read being parsed, if it may be remembered
        self.begun = 0  # requests begun in it
        self.learnt: tuple[tuple[Any, int], _Remembered] | None = None  # (tags, what) to remember it by
        copied = _template(vars(self))
        if copied is not None:
            shared.template = (server_state, config, app_state, loop, copied)

    # -- the connection's addresses, read when first needed ---------------------------------------
    # uvicorn reads both as the connection is made (a socket object and a system call each); a
    # node's poll or heartbeat answered here never needs them (a new connection per request is
    # most of a fleet's traffic). A request handed on reads them for its scope.

    _server: Any
    _client: Any

    @property
    def server(self) -> tuple[str, int | None] | None:
        if self._server is _UNREAD:
            self._server = get_local_addr(self.transport)
        return self._server

    @server.setter
    def server(self, value: tuple[str, int | None] | None) -> None:
        self._server = value

    @property
    def client(self) -> tuple[str, int] | None:
        if self._client is _UNREAD:
            self._client = get_remote_addr(self.transport)
        return self._client

    @client.setter
    def client(self, value: tuple[str, int] | None) -> None:
        self._client = value

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # uvicorn's, but its scope is made only for a request handed on to it (_scope)
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = None  # type: ignore[assignment]
        self.principal = None
        self.state = _PASSED
        self.head_open = True
        self.in_message = True
        self.begun += 1

    def on_headers_complete(self) -> None:
        self.head_open, self.head_read = False, 0
        if self.door.fast and self._idle() and not self.parser.should_upgrade():
            if self.transport.is_closing():
                self.state = _DONE  # after a closing answer: nothing more is read
                return
            try:
                taken = self._take()
            except Exception as exc:
                self._finish(self.door.failed(exc))
                taken = True
            if taken:
                return
        self._pass_on()

    def on_body(self, body: bytes) -> None:
        if self.state == _PASSED:
            super().on_body(body)
        elif self.state == _BEAT or self.state == _ENROLL:
            self.body += body  # at most the Content-Length announced, <= BODY_MAX: llhttp holds to it

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.state == _PASSED:
            super().on_message_complete()
            return
        if self.state == _ENROLL:
            self._enroll_body()
            return
        if self.state != _BEAT:
            self.answered = True  # the rest of an answered request is read: idle again
            return
        body = self._body_in()
        assert self.principal is not None and self.head is not None
        try:
            answer = self.door.beat(self.principal, body, self.head.content_type)
        except Exception as exc:
            answer = self.door.failed(exc)
        if answer is None:  # the route says why
            self._hand_on(body)
            return
        self._finish(answer)

    def _body_in(self) -> bytes:
        """The body gathered here; the request is now answered here or handed on."""
        self._stop_body_timer()
        self.state = _DONE
        body, self.body = bytes(self.body), bytearray()
        return body

    def _hand_on(self, body: bytes) -> None:
        """uvicorn's own handling of the request, from its head on (the application answers)."""
        self.state = _PASSED
        self._pass_on()
        if body:
            super().on_body(body)
        super().on_message_complete()

    # -- the transport ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's, with the addresses left unread (the properties above)
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self._server = self._client = _UNREAD
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.isEnabledFor(TRACE_LOG_LEVEL):  # (uvicorn asks its level: NOTSET passes)
            client = self.client
            prefix = f"{client[0]}:{client[1]} - " if client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)

    def data_received(self, data: bytes) -> None:
        memo = self.memo
        if memo is not None and not self.in_message:
            remembered = memo.entries.get(data)
            if remembered is not None and self._again(memo, remembered):
                return
            if len(data) <= MEMO_BYTES:
                self.learning, self.begun = data, 0
        self.answered = False
        self.reading = True
        if self.parser is None:
            self._parse()
        try:
            super().data_received(data)
        finally:
            self.reading = False
            self.learning = None
        if self.learnt is not None:
            tags, what = self.learnt
            self.learnt = None
            if memo is not None and self.begun == 1 and not self.in_message:
                memo.learn(data, tags, what)  # exactly one request, whole
        if self.head_open and not self.transport.is_closing():
            self.head_read += len(data)
            if self.head_read > HEAD_MAX:
                self.logger.warning("Request head larger than %d bytes.", HEAD_MAX)
                self.send_400_response("Request head too large.")
                return
        if self.answered:
            self._idle_again()

    def _parse(self) -> None:
        """httptools' parser for this connection, as uvicorn makes it."""
        parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.parser = parser

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_body_timer()
        for outcome in list(self.enrolling):
            outcome.cancel()  # not written if its group has not been taken yet
        if self._client is _UNREAD and not self.logger.isEnabledFor(TRACE_LOG_LEVEL):
            self._client = None  # uvicorn formats it for a trace line not logged: not read for that
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.state == _BEAT or self.state == _ENROLL:
            self.keep_alive = False  # answered once its body is in, then closed
        else:
            super().shutdown()

    # -- here --------------------------------------------------------------------------------------

    def _scope(self) -> Any:
        """The current request's ASGI scope, made by uvicorn's own on_message_begin once needed."""
        if self.scope is None:
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().on_message_begin()
            self.url, self.headers, self.expect_100_continue = url, headers, expect
            self.scope["headers"] = headers
        return self.scope

    def _pass_on(self) -> None:
        """The request goes on through uvicorn's code, as if this subclass were not there; one
        identified and admitted here carries its principal (not counted again)."""
        scope = self._scope()
        if self.principal is not None:
            scope["state"]["principal"] = self.principal
        super().on_headers_complete()

    def _idle(self) -> bool:
        cycle = self.cycle
        return (cycle is None or cycle.response_complete) and not self.pipeline and not self.flow.write_paused

    def _take(self) -> bool:
        """Whether this request is answered (or being read) here; False: uvicorn's."""
        door, url = self.door, self.url
        method = self.parser.get_method()
        self.method = method.decode("ascii")
        self.keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        admission = door.admission
        hot = (url == self.poll_url and method == b"GET") or (url == self.beat_url and method == b"POST")
        # Past the in-flight cap a poll or heartbeat answered from memory takes no slot: answered
        # (what of it goes on to the application is refused there, by the first layer).
        if admission.flooded() or (admission.capped() and not hot):
            path = url.split(b"?", 1)[0].split(b"#", 1)[0]
            if self.root_path or b"%" in path or path in _UNLIMITED or not path.startswith(b"/"):
                return False  # the first layer decides (as it did before this protocol)
            with_body = announces_body(self.headers)
            door.admission.on_refused()
            self._finish(_REFUSED_CLOSING if with_body else _REFUSED)
            return True
        if url == self.poll_url and method == b"GET":
            poll = True
        elif url == self.beat_url and method == b"POST":
            poll = False
        elif self.enroll_door is not None and url == self.enroll_door.url and method == b"POST":
            return self._take_enrollment(self.enroll_door)
        else:
            return False
        if self.expect_100_continue or self.root_path:
            return False
        head = NodeHead.read(self.headers)
        if poll and (head.chunked or head.length not in (None, b"0")):
            return False  # a poll with a body: uvicorn reads it
        tags = self.memo.tags() if poll and self.learning is not None and self.memo is not None else None
        principal = door.node(head)
        if principal is None:
            return False
        if not poll and not (door.readable(head) and int(head.length or b"0") <= BODY_MAX):
            return False
        refused = door.admit(principal)
        if refused is not None:
            self._finish(refused)
            return True
        self.principal = principal  # identified and admitted: not again if handed on (_pass_on)
        if poll:
            answer = door.poll(principal, head.if_none_match)
            if answer is None:
                return False  # the route answers (loads the policies first, or 404)
            self._finish(answer)
            if tags is not None and answer.status == 304 and self.begun == 1:
                what = (principal.host_id, principal.limit_key, tuple(answer.headers), self.keep_alive)
                self.learnt = tags, what
            return True
        self.state, self.head = _BEAT, head
        self.body_timer = self.loop.call_later(door.ctx.config.body_timeout, self._body_late)
        return True

    # -- a poll remembered (PollMemo) ---------------------------------------------------------------

    def _again(self, memo: PollMemo, remembered: _Remembered) -> bool:
        """Answer a remembered poll as _take would; False: it goes through the parser after all."""
        door = self.door
        if not door.fast or not self._idle() or self.transport.is_closing() or self._logs_access():
            return False
        host_id, limit_key, headers, keep_alive = remembered
        self.answered = False
        self.method, self.keep_alive = "GET", keep_alive
        if door.admission.flooded():
            door.admission.on_refused()
            self._finish(_REFUSED)
        elif not memo.current():
            return False
        else:
            door.ctx.auth.seen(host_id)
            refused = door.admit_key(limit_key)
            if refused is not None:
                self._finish(refused)
            else:
                self.state = _DONE
                data = memo.render(self.server_state.default_headers, headers, keep_alive)
                self._written(304, data, keep_alive)
        if self.answered:
            self._idle_again()
        return True

    def _logs_access(self) -> bool:
        return self.access_log and self.access_logger.isEnabledFor(logging.INFO)

    # -- an enrollment ------------------------------------------------------------------------------

    def _take_enrollment(self, door: EnrollDoor) -> bool:
        """Its body gathered here (or a refusal written); False: uvicorn's (the application's)."""
        if self.expect_100_continue or self.root_path or self._forwarded():
            return False
        head = NodeHead.read(self.headers)
        principal = door.enroller(head.authorization)
        if principal is None or not (self.door.readable(head) and int(head.length or b"0") <= BODY_MAX):
            return False
        refused = door.admit(principal, self.client)
        if refused is not None:
            self._finish(refused)
            return True
        self.state, self.principal, self.head = _ENROLL, principal, head  # not again if handed on
        self.body_timer = self.loop.call_later(self.door.ctx.config.body_timeout, self._body_late)
        return True

    def _forwarded(self) -> bool:
        """Whether uvicorn's proxy headers layer may take the client's address from the request
        (the address buckets' key): then the application works it out."""
        return bool(self.config.proxy_headers) and any(name == b"x-forwarded-for" for name, _ in self.headers)

    def _enroll_body(self) -> None:
        body = self._body_in()
        assert self.enroll_door is not None and self.head is not None
        try:
            started = self.enroll_door.start(body, self.head.content_type)
        except Exception as exc:
            started = self.door.failed(exc)
        if started is None:  # the route says why
            self._hand_on(body)
        elif isinstance(started, Answer):
            self._finish(started)
        else:
            self._wait_for(started)

    def _wait_for(self, enrolling: Enrolling) -> None:
        """The connection's request in progress until the group is settled (see the module's doc)."""
        cycle = RequestResponseCycle(
            scope=self._scope(),
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=_NO_WAITER,
            expect_100_continue=False,
            keep_alive=self.keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.more_body = False
        self.cycle = cycle
        self.enrolling.add(enrolling.outcome)
        # What the access log says of it, read now: the parser may be on to the next request then.
        request = self._request_line() if self.access_log else None

        def settled(outcome: asyncio.Future[str | Exception]) -> None:
            self.enrolling.discard(outcome)
            try:
                self._enrolled(cycle, enrolling, request)
            finally:
                # As uvicorn unhooks its own cycles once their app returns: else this cycle and the
                # protocol (self.cycle) keep each other, and the connection, for a full collection.
                cycle.on_response = _answered

        enrolling.outcome.add_done_callback(settled)

    def _enrolled(
        self, cycle: RequestResponseCycle, enrolling: Enrolling, request: tuple[str, str, str] | None
    ) -> None:
        if cycle.disconnected or self.transport.is_closing():
            cycle.response_complete = True  # nobody to answer
            return
        try:
            answer = EnrollDoor.settled(enrolling)
        except Exception as exc:
            answer = self.door.failed(exc)
        self.door.ctx.metrics.answered("POST", answer.status)  # only a POST is taken as an enrollment
        data, keep_alive = render(self.server_state.default_headers, answer, cycle.keep_alive)
        if request is not None:
            self._log_access(answer.status, request)
        self.transport.write(data)
        cycle.response_complete = True
        if not keep_alive:
            self.transport.close()
        cycle.on_response()  # as uvicorn after its answers: counted, then the next pipelined request

    def _finish(self, answer: Answer) -> None:
        """Write the whole answer; close, or wait for the next request."""
        self.state = _DONE
        default_headers = self.server_state.default_headers
        if answer is _REFUSED or answer is _REFUSED_CLOSING:  # most answers under a flood: rendered once
            data, keep_alive = _rendered(default_headers, answer, self.keep_alive)
        else:
            data, keep_alive = render(default_headers, answer, self.keep_alive)
        if self.access_log:
            self._log_access(answer.status)
        self._written(answer.status, data, keep_alive)

    def _written(self, status: int, data: bytes, keep_alive: bool) -> None:
        """`data` (an answer of `status`, rendered) written; closed, or waiting for the next request."""
        self.door.ctx.metrics.answered(self.method, status)
        self.transport.write(data)
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
        else:
            self.answered = True

    def _idle_again(self) -> None:
        """After an answer written here: the keep-alive timeout runs, as uvicorn's does after its
        own answers (but not while another request is being served or read). A timer still
        pending is kept: it looks at the last answer's time when it fires (one timer per
        keep-alive period, not a new one and a cancelled one per request)."""
        self.answered = False
        self.active_at = self.loop.time()
        if self.state == _BEAT or not self._idle() or self.transport.is_closing():
            return
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _unset_keepalive_if_required(self) -> None:
        if not self.reading:  # data came in: the pending timer decides when it fires
            super()._unset_keepalive_if_required()

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if self.head_open or self.state == _BEAT or self.state == _ENROLL or not self._idle():
            return  # a request being read or served: its answer arms the timer again
        due = self.active_at + self.timeout_keep_alive
        if due > self.loop.time():  # answered here since the timer was set
            self.timeout_keep_alive_task = self.loop.call_at(due, self.timeout_keep_alive_handler)
            return
        super().timeout_keep_alive_handler()

    def _body_late(self) -> None:
        self.body_timer = None
        if (self.state == _BEAT or self.state == _ENROLL) and not self.transport.is_closing():
            self.body = bytearray()
            self._finish(self.door.late())  # the rest of the body, should it come, is dropped
            if self.answered:
                self._idle_again()

    def _stop_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _log_access(self, status: int, request: tuple[str, str, str] | None = None) -> None:
        """The access log line; `request`: (method, path, version) of a request answered later."""
        if not self.access_logger.isEnabledFor(logging.INFO):
            return  # nothing to format (nor an address to read)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
        method, path, version = request or self._request_line()
        self.access_logger.info('%s - "%s %s HTTP/%s" %d', client, method, path, version, status)

    def _request_line(self) -> tuple[str, str, str]:
        return self.method, self.url.decode("latin-1"), self.parser.get_http_version()
