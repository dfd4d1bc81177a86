"""Simulated agents that talk to the server the way endpoint_agent does, on one asyncio loop.

    fleet = Fleet(loop, Server("127.0.0.1", port, enroll_secret), recorder)   # loop None: the running one
    fleet.start(hosts)          # each host polls and reports on the agent's own schedules
    fleet.stop()

What each host does is what the real agent does with its default settings:
- policy sync (endpoint_agent/sync): GET /policy with If-None-Match every `sync_interval` (60 s)
  +-20%, on `PollSchedule` itself; a failure backs off with full jitter, never sooner than the
  server's Retry-After (429, 503);
- report rounds (endpoint_agent/report): every `upload_interval` (60 s) +-10%, the first at a
  random point of the first interval (`ReportSchedule` itself): upload pending events in batches of
  at most 500, then one heartbeat; the first failure ends the round and backs off;
- a node call answered 401 enrolls again (sending the current node key: a rotation) and is retried
  once; a host enrolls once, lazily, and keeps its key.
Connections as the agent's client holds them (one httpx client for both jobs: it keeps a
connection idle for up to 5 s, and uvicorn closes one idle for 5 s): after each request the
host's connection stays open, idle, until the server closes it; a request within 5 s of the
host's last one reuses it, any other opens a new one. At 60 s intervals most polls and report
rounds open a connection (a round sends its uploads and heartbeat on one), and the server holds
about 5 s worth of idle connections and closes each one itself, as it does for a real fleet.
A host "booted" before the simulation: its first poll comes at a random point of one interval.

Events: most hosts are quiet (a violation every couple of hours); a tenth are noisy (a couple a
minute, and now and then a burst of a few hundred, as a blocked program respawning in a loop).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.fleetsim.http import (
    Answer,
    Connection,
    Socket,
    Timeout,
    encode,
    exchange,
    head,
    source_address,
    with_body,
)
from bench.fleetsim.stats import ERROR, TIMEOUT, Recorder
from bench.fleetsim.timers import Wheel
from endpoint_agent import __version__
from endpoint_agent.clock import SystemClock
from endpoint_agent.report.backoff import ReportSchedule
from endpoint_agent.sync.client import DEFAULT_TIMEOUT, parse_retry_after
from endpoint_agent.sync.schedule import PollSchedule

API = "/api/v1"
MAX_BATCH = 500  # endpoint_agent/report/uploader.py MAX_BATCH_EVENTS
NOISY_SHARE = 0.1
QUIET_PER_S = 0.5 / 3600  # a quiet host: one violation every two hours
NOISY_PER_S = 2 / 60  # a noisy one: two a minute ...
BURST_PER_S = 1 / 1800  # ... and a burst every half hour
BURST_SIZE = 200
# httpx's default keepalive_expiry: the agent's client (endpoint_agent/sync/client.py, one for its
# polls and its report rounds) reuses a connection idle for less than this, if the server has not
# closed it (uvicorn closes one idle for 5 s).
KEEPALIVE = 5.0
SYN_RETRY = 0.9  # a handshake this long: the first SYN was dropped (the kernel sends it again after 1 s)
_CLOCK = SystemClock()
_HEADERS = {"Accept": "application/json", "User-Agent": f"endpoint-agent/{__version__}"}
_JSON = {"Content-Type": "application/json"}


def _encode(method: bytes, path: str, headers: dict[str, str], body: bytes) -> bytes:
    return encode(method, API + path, {**_HEADERS, **headers}, body)


def poll_request(host: SimHost) -> bytes:
    """The conditional policy poll of an enrolled host, as the agent sends it."""
    headers = {"If-None-Match": host.etag} if host.etag else {}
    return _encode(b"GET", "/policy", {**headers, "Authorization": f"Bearer {host.node_key}"}, b"")


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    enroll_secret: str


class Unavailable(Exception):
    """A temporary failure (timeout, network, 429, 5xx): back off, honouring retry_after."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(Exception):
    """The server refused the request (4xx other than 429): back off without Retry-After."""


def seeded_key(seed: int, index: int) -> str:
    """The node key of seeded host `index` (the seeding side stores its sha256)."""
    return base64.urlsafe_b64encode(hashlib.sha256(f"fleet:{seed}:{index}".encode()).digest()).decode()[:43]


@dataclass(eq=False)
class SimHost:
    index: int
    machine_id: str
    hostname: str
    noisy: bool
    host_id: str | None = None
    node_key: str | None = None
    etag: str | None = None
    pending: int = 0  # events recorded and not yet acknowledged
    accrued_at: float = field(default_factory=time.monotonic)
    poll: PollSchedule | None = None
    report: ReportSchedule | None = None
    enrolling: asyncio.Future[None] | None = None  # one enrollment at a time, as the agent's lock
    # kind -> (key, etag, request head): a poll or heartbeat is the same request while they are
    heads: dict[str, tuple[str | None, str | None, bytes]] | None = None
    idle: list[Socket] | None = None  # its client's open connections not in use (KEEPALIVE)
    # The machine's own (loopback) address: it connects from there, as a real one would.
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = source_address(self.index)  # once: making it costs more than a request's parse


def make_hosts(indices: Iterable[int], *, seed: int, seeded: bool, rng: random.Random) -> list[SimHost]:
    """Hosts `indices` of a fleet; `seeded`: already enrolled (keys from `seeded_key`)."""
    hosts = []
    for i in indices:
        host = SimHost(i, f"fleet-{seed}-{i}", f"ws-{i:06d}", noisy=rng.random() < NOISY_SHARE)
        if seeded:
            host.host_id, host.node_key = seeded_host_id(seed, i), seeded_key(seed, i)
        hosts.append(host)
    return hosts


def seeded_host_id(seed: int, index: int) -> str:
    return str(uuid.UUID(bytes=hashlib.md5(f"fleet:{seed}:{index}".encode()).digest(), version=4))


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


_VIOLATION = (
    '{"kind":"violation","event_id":"%s","detected_at":"%s","rule_id":"p2p-qbittorrent",'
    '"category":"p2p","severity":"high","action":"killed","pid":%d,"process_name":"qbittorrent",'
    '"exe":"/usr/bin/qbittorrent","sha256":"' + "9f" * 32 + '","cmdline":"/usr/bin/qbittorrent '
    '--profile=work","ppid":1812,"parent_name":"bash","username":"alice","evidence":[{"attribute":'
    '"name","pattern":"qbittorrent*","value":"qbittorrent"}],"reason":"process name \'qbittorrent\''
    ' matched \'qbittorrent*\' (rule p2p-qbittorrent)","policy_version":1,"hostname":"%s",'
    '"os":"Debian GNU/Linux 13 (trixie)"}'
)


def event_batch(hostname: str, count: int, rng: random.Random) -> bytes:
    """A POST /events body of `count` violations (each about 650 bytes, as the agent writes them)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    texts = [
        _VIOLATION
        % (uuid.UUID(int=rng.getrandbits(128), version=4), now, rng.randrange(300, 99999), hostname)
        for _ in range(count)
    ]
    return ('{"events":[' + ",".join(texts) + "]}").encode()


def heartbeat_body(policy_version: int | None = 1) -> bytes:
    return json.dumps(
        {
            "agent_version": __version__,
            "policy_version": policy_version,
            "mode": "enforce",
            "last_scan_at": datetime.now(UTC).isoformat(),
            "counters": {"scans": 120, "findings": 4, "kills": 1, "dropped_events": 0},
            "circuit_state": "closed",
        }
    ).encode()


class Fleet:
    """Hosts on one event loop; every request's outcome and latency goes to `recorder`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        server: Server,
        recorder: Recorder,
        *,
        rng: random.Random | None = None,
        sync_interval: float = 60.0,
        upload_interval: float = 60.0,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._loop = loop
        self.server = server
        self._recorder = recorder
        self.rng = rng or random.Random()
        self.sync_interval = sync_interval
        self.upload_interval = upload_interval
        self.timeout = timeout
        self.keepalive = keepalive  # 0: every request on a connection of its own, closed after
        self.running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._wheel: Wheel | None = None
        self._beat: tuple[int, bytes] = (0, b"")  # (second, heartbeat body): the same for a second

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop given, else the running one (a fleet made before its loop runs)."""
        return self._loop or asyncio.get_running_loop()

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    @recorder.setter
    def recorder(self, recorder: Recorder) -> None:
        """Results from now on go to `recorder` (the scheduler's lag too)."""
        self._recorder = recorder
        if self._wheel is not None:
            self._wheel.recorder = recorder

    # -- scheduling ----------------------------------------------------------------------------

    def plan(self, hosts: Iterable[SimHost], offset: float = 0.0) -> None:
        """Run `hosts` from `offset` seconds after the start (or now, if started) on the agent's
        schedules, as if each had booted at a random earlier time: a first poll and a first
        report round at a random point of one interval each. Their schedules are made when first
        due; plan a large fleet before the start, so that its clock starts with them in place."""
        wheel = self._wheel
        if wheel is None:
            wheel = self._wheel = Wheel(self.loop, self._recorder)
        if self.running:
            offset += self.loop.time() - wheel.origin
        after, uniform = wheel.after, self.rng.uniform
        for host in hosts:
            after(offset + uniform(0, self.sync_interval), self._fire, self._poll, host)
            after(offset + uniform(0, self.upload_interval), self._fire, self._report, host)

    def start(self, hosts: Sequence[SimHost] = ()) -> None:
        """Start the clock (hosts planned before run from now) and run `hosts` too."""
        if hosts:
            self.plan(hosts)
        if self._wheel is None:
            self._wheel = Wheel(self.loop, self._recorder)
        self.running = True
        self._wheel.start()

    def stop(self) -> None:
        self.running = False
        if self._wheel is not None:
            self._wheel.stop()
            self._wheel = None
        for task in self._tasks:
            task.cancel()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _later(
        self, delay: float, job: Callable[[SimHost], Coroutine[Any, Any, None]], host: SimHost
    ) -> None:
        if self.running and self._wheel is not None:
            self._wheel.at(self.loop.time() + delay, self._fire, job, host)

    def _fire(self, job: Callable[[SimHost], Coroutine[Any, Any, None]], host: SimHost) -> None:
        if self.running:
            task = self.loop.create_task(job(host))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _poll(self, host: SimHost) -> None:
        if host.poll is None:
            host.poll = PollSchedule(self.sync_interval, clock=_CLOCK, rng=self.rng)
        try:
            await self.poll_policy(host)
        except Unavailable as exc:
            delay = host.poll.failed(exc.retry_after)
        except Rejected:
            delay = host.poll.failed()
        else:
            delay = host.poll.succeeded()
        self._later(delay, self._poll, host)

    async def _report(self, host: SimHost) -> None:
        if host.report is None:  # its first due time was drawn by plan(): an interval's events
            host.report = ReportSchedule(self.upload_interval, clock=_CLOCK, rng=self.rng)
            # Not since the host was made: a later step's hosts were made minutes before they run.
            host.accrued_at = time.monotonic() - self.upload_interval
        try:
            more = await self.report_round(host)
        except Unavailable as exc:
            host.report.failed(exc.retry_after)
        except Rejected:
            host.report.failed()
        else:
            host.report.succeeded(more=more)
        self._later(host.report.seconds_until_due(), self._report, host)

    # -- what an agent sends -------------------------------------------------------------------

    async def poll_policy(self, host: SimHost, conn: Connection | None = None) -> Answer:
        headers = {"If-None-Match": host.etag} if host.etag else {}
        answer = await self.node_call(host, "policy", b"GET", "/policy", headers, b"", conn, keep=True)
        if answer.status == 200:
            host.etag = answer.header(b"etag")
        return answer

    async def report_round(self, host: SimHost) -> bool:
        """Upload pending events (at most 100 batches), then a heartbeat, on the host's connection
        (endpoint_agent/report/job.py); True when events are left."""
        self._accrue(host)
        for _ in range(100):
            if not host.pending:
                break
            count = min(host.pending, MAX_BATCH)
            body = event_batch(host.hostname, count, self.rng)
            answer = await self.node_call(host, "events", b"POST", "/events", _JSON, body)
            acked = len(json.loads(answer.body).get("acked", ()))
            host.pending -= acked
            self.recorder.events_acked += acked
        await self.node_call(
            host, "heartbeat", b"POST", "/heartbeat", _JSON, self._heartbeat_body(), keep=True
        )
        return host.pending > 0

    def _heartbeat_body(self) -> bytes:
        second = int(time.time())
        if self._beat[0] != second:
            self._beat = (second, heartbeat_body())
        return self._beat[1]

    def _accrue(self, host: SimHost) -> None:
        now = time.monotonic()
        elapsed, host.accrued_at = now - host.accrued_at, now
        if host.noisy:
            host.pending += _poisson(self.rng, NOISY_PER_S * elapsed)
            host.pending += BURST_SIZE * _poisson(self.rng, BURST_PER_S * elapsed)
        else:
            host.pending += _poisson(self.rng, QUIET_PER_S * elapsed)

    async def enroll(self, host: SimHost, conn: Connection | None = None) -> None:
        body: dict[str, str] = {"hostname": host.hostname, "machine_id": host.machine_id}
        if host.node_key:
            body["node_key"] = host.node_key  # a rotation: the server re-enrolls a known machine only so
        headers = {"Authorization": f"Bearer {self.server.enroll_secret}", "Content-Type": "application/json"}
        raw = _encode(b"POST", "/enroll", headers, json.dumps(body).encode())
        answer = await self.call("enroll", raw, conn, host)
        self._raise_for_status(answer)
        obj = json.loads(answer.body)
        host.host_id, host.node_key = obj["host_id"], obj["node_key"]

    async def _enroll_once(self, host: SimHost, rejected: str | None) -> None:
        """Enroll unless another job of this host is doing it or already has (its key differs from
        `rejected`): the agent's policy sync and report jobs share one enrollment
        (endpoint_agent/sync/client.py)."""
        if host.enrolling is not None:
            await asyncio.shield(host.enrolling)
            return
        if host.node_key is not None and host.node_key != rejected:
            return
        host.enrolling = self.loop.create_future()
        try:
            await self.enroll(host)
            host.enrolling.set_result(None)
        except asyncio.CancelledError:
            host.enrolling.cancel()
            raise
        except Exception as exc:
            host.enrolling.set_exception(exc)
            host.enrolling.exception()  # retrieved: there may be no waiter
            raise
        finally:
            host.enrolling = None

    async def node_call(
        self, host: SimHost, kind: str, method: bytes, path: str, headers: dict[str, str], body: bytes,
        conn: Connection | None = None, *, keep: bool = False,
    ) -> Answer:  # fmt: skip
        """A node-key request; enrolls first if needed, and again (once) on 401. `keep`: the
        request's head is the same while the host's key and ETag are (polls, heartbeats): kept."""
        if host.node_key is None:
            await self._enroll_once(host, None)
        for attempt in (1, 2):
            key = host.node_key
            heads = host.heads
            held = heads.get(kind) if heads else None
            if held and held[0] == key and held[1] == host.etag:
                raw = with_body(held[2], body, post=method == b"POST")
            else:
                top = head(method, API + path, {**_HEADERS, **headers, "Authorization": f"Bearer {key}"})
                if keep:
                    if heads is None:
                        heads = host.heads = {}
                    heads[kind] = (key, host.etag, top)
                raw = with_body(top, body, post=method == b"POST")
            answer = await self.call(kind, raw, conn, host)
            if answer.status != 401:
                self._raise_for_status(answer)
                return answer
            if attempt == 1:
                await self._enroll_once(host, key)
                conn = None  # a 401 closes the connection (server_stub/middleware.py)
        raise Rejected(f"{kind}: node key refused right after enrolling")

    async def call(
        self, kind: str, raw: bytes, conn: Connection | None = None, host: SimHost | None = None
    ) -> Answer:
        """One encoded request, timed and recorded: on `conn` if it is still usable, else on one of
        `host`'s connections (kept KEEPALIVE seconds, as its client would), else on a connection
        of its own (closed after)."""
        started = time.perf_counter()
        try:
            if conn is not None and conn.usable:
                answer = await conn.send(raw)
            elif host is not None and self.keepalive > 0:
                answer = await self._pooled(host, raw)
            else:
                server = self.server
                self.recorder.connections += 1
                source = host.address if host is not None else None
                answer = await exchange(
                    self.loop, server.host, server.port, raw, timeout=self.timeout, source=source
                )
        except Timeout as exc:
            self.recorder.add(kind, TIMEOUT, time.perf_counter() - started)
            raise Unavailable(f"{kind}: timed out") from exc
        except OSError as exc:
            self.recorder.add(kind, ERROR, time.perf_counter() - started)
            raise Unavailable(f"{kind}: {exc}") from exc
        elapsed = time.perf_counter() - started
        self.recorder.add(kind, answer.status, elapsed)
        self.recorder.note_slow(kind, elapsed)
        return answer

    async def _pooled(self, host: SimHost, raw: bytes) -> Answer:
        """On the host's most recently used open connection idle for less than KEEPALIVE (one
        the server closed is closed already), else on a new one; kept open after for the next."""
        idle = host.idle
        if idle is None:
            idle = host.idle = []
        now = self.loop.time()
        sock = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed and now - candidate.idle_since < self.keepalive:
                sock = candidate
                break
            candidate.close()  # expired: httpx closes it rather than reuse it
        if sock is None:
            self.recorder.connections += 1
            sock = Socket(self.loop, self.server.host, self.server.port, host.address)
            try:
                return await self._kept(host, sock, raw)
            finally:
                if sock.handshake >= 0:
                    self.recorder.handshakes.add(sock.handshake)
                if sock.handshake >= SYN_RETRY:
                    self.recorder.slow_connects += 1
        started = time.perf_counter()
        answer = await self._kept(host, sock, raw)
        self.recorder.reused.add(time.perf_counter() - started)
        return answer

    async def _kept(self, host: SimHost, sock: Socket, raw: bytes) -> Answer:
        answer = await sock.request(raw, timeout=self.timeout)  # closed if it fails
        if host.idle is None:  # the fleet let go of its connections meanwhile (close_idle)
            sock.close()
        elif not sock.closed:
            host.idle.append(sock)
        return answer

    def close_idle(self, hosts: Iterable[SimHost]) -> None:
        for host in hosts:
            for sock in host.idle or ():
                sock.close()
            host.idle = None

    def _raise_for_status(self, answer: Answer) -> None:
        code = answer.status
        if code < 400 or code == 404:
            return  # 404 on /policy: nothing published for this host yet, an answer
        if code == 429 or code >= 500:
            retry_after = parse_retry_after(answer.header(b"retry-after"), _CLOCK)
            if retry_after is not None:
                self.recorder.retry_after_seen += 1
            raise Unavailable(f"HTTP {code}", retry_after)
        raise Rejected(f"HTTP {code}: {answer.body[:200]!r}")


__all__ = [
    "Fleet",
    "Rejected",
    "Server",
    "SimHost",
    "Unavailable",
    "event_batch",
    "make_hosts",
    "poll_request",
    "seeded_host_id",
    "seeded_key",
]
