"""A small caching DNS forwarder on a loopback address: the DNS filter's data path.

    forwarder = Forwarder(Endpoint("127.0.0.153", 53), upstreams, judge, clock=clock)
    forwarder.start()      # binds UDP and TCP; raises DnsFilterError when it cannot
    ...
    forwarder.stop()

Per query (UDP, one thread; TCP, a thread per connection, bounded): parse (dnslib), ask the
`QueryJudge` (a dict probe unless some rule names the domain), then answer blocked names with
NXDOMAIN or a sinkhole address, answer from the cache, or forward to the upstreams in turn.
Upstream answers teach the judge the addresses (A/AAAA with TTL) and fill the cache. Nothing a
client sends can stop the loop: a malformed packet is dropped or answered FORMERR, a full
table of pending queries is answered SERVFAIL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from endpoint_agent.clock import Clock
from endpoint_agent.dns.cache import AnswerCache
from endpoint_agent.errors import AgentError
from endpoint_agent.types import Endpoint

logger = logging.getLogger(__name__)

PROBE_NAME = "endpoint-agent-probe.invalid"  # answered by the forwarder itself (liveness probe)
DEFAULT_TIMEOUT = 1.5  # per attempt; stubs (glibc: 5 s) wait longer than two attempts
MIN_ATTEMPTS = 2  # a lost UDP packet to a single upstream is retried once
MAX_PENDING = 4096
MAX_TCP_CLIENTS = 64
MAX_REPEATS = 10_000
SINKHOLE_TTL = 60
_BATCH = 64


class DnsFilterError(AgentError):
    """The DNS filter cannot start or serve (address in use, no upstream, ...)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    block: bool = False
    learn: bool = False  # resolve upstream anyway, to learn the blocked name's addresses
    sinkhole: str | None = None
    # True when no rule names the domain: the verdict holds for every repeat of the query until
    # the judge's generation changes (so a repeat may skip the judge).
    final: bool = True


ALLOW = Verdict()
ALLOW_JUDGED = Verdict(final=False)  # allowed, but some rule names the domain: judge every query


class QueryJudge(Protocol):
    def judge(self, name: str, proto: str, client: Endpoint) -> Verdict:
        """What to do with a query for `name` (normalised) from `client`."""
        ...

    def learned(self, name: str, answers: list[tuple[str, int]]) -> None:
        """An upstream answered `name` with these (address, ttl)."""
        ...

    @property
    def generation(self) -> object:
        """Changes whenever a verdict may change (a new policy or mode): repeats are re-judged."""
        ...


@dataclass
class ForwarderStats:
    queries: int = 0
    cache_hits: int = 0
    blocked: int = 0
    forwarded: int = 0
    upstream_answers: int = 0
    upstream_timeouts: int = 0
    servfail: int = 0
    malformed: int = 0
    errors: int = 0
    last_upstream_ok: float | None = None  # monotonic
    last_upstream_failure: float | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("last_")}


@dataclass(slots=True)
class _Pending:
    client: tuple[str, int] | None  # None: learn only, nobody waits for the answer
    orig_id: bytes
    name: str
    key: tuple[str, int, int]
    query: bytes
    sent: float
    upstream: int
    attempt: int = 0


@dataclass
class _Sockets:
    udp: socket.socket
    tcp: socket.socket
    upstream: socket.socket
    threads: list[threading.Thread] = field(default_factory=list)


def normal_qname(record: DNSRecord) -> str:
    return str(record.q.qname).rstrip(".").lower()


def blocked_answer(query: DNSRecord, sinkhole: str | None) -> bytes:
    reply = query.reply()
    qtype = query.q.qtype
    if sinkhole is not None and qtype in (QTYPE.A, QTYPE.AAAA):
        is_v6 = ":" in sinkhole
        if (qtype == QTYPE.AAAA) == is_v6:
            rdata = AAAA(sinkhole) if is_v6 else A(sinkhole)
            reply.add_answer(RR(query.q.qname, qtype, rdata=rdata, ttl=SINKHOLE_TTL))
        return reply.pack()  # the other family: NOERROR without an answer
    if sinkhole is None:
        reply.header.rcode = RCODE.NXDOMAIN
    return reply.pack()


def error_answer(query: DNSRecord, rcode: int) -> bytes:
    reply = query.reply()
    reply.header.rcode = rcode
    return reply.pack()


def _endpoint(addr: tuple[str, int]) -> tuple[str, int]:
    return (addr[0], addr[1])


class Forwarder:
    def __init__(
        self,
        listen: Endpoint,
        upstreams: Sequence[Endpoint],
        judge: QueryJudge,
        *,
        clock: Clock,
        cache: AnswerCache | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if not upstreams:
            raise DnsFilterError("no upstream DNS server to forward to")
        self.listen = listen
        self.upstreams = tuple(upstreams)
        self._upstream_addrs = {(u.ip, u.port): i for i, u in enumerate(self.upstreams)}
        self._judge = judge
        self._clock = clock
        self.cache = cache or AnswerCache(clock)
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: dict[bytes, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: _Sockets | None = None
        self._tcp_slots = threading.BoundedSemaphore(MAX_TCP_CLIENTS)
        self._dual = False
        # The bytes of a query after its id -> its cache key and the judge's generation when it
        # was let through: an identical repeat is answered from the cache without parsing it again
        # (what most traffic is; the parse is most of a cache hit's cost).
        self._repeats: dict[bytes, tuple[tuple[str, int, int], object]] = {}
        self.stats = ForwarderStats()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen.ip else socket.AF_INET
        where = (self.listen.ip, self.listen.port)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        dual = any(":" in up.ip for up in self.upstreams)
        upstream = socket.socket(socket.AF_INET6 if dual else socket.AF_INET, socket.SOCK_DGRAM)
        self._dual = dual
        try:
            if dual:
                upstream.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # v4 upstreams as mapped
            upstream.bind(("::" if dual else "0.0.0.0", 0))
            udp.bind(where)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(where)
            tcp.listen(64)
        except OSError as exc:
            for s in (udp, tcp, upstream):
                s.close()
            raise DnsFilterError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from exc
        for s in (udp, upstream):
            s.setblocking(False)
        tcp.settimeout(0.5)
        self._stop.clear()
        self._sockets = _Sockets(udp, tcp, upstream)
        for name, target in (("dns-udp", self._udp_loop), ("dns-tcp", self._tcp_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._sockets.threads.append(thread)
        logger.info("DNS forwarder on %s, upstreams %s", self.listen, ", ".join(map(str, self.upstreams)))

    def stop(self) -> None:
        self._stop.set()
        sockets, self._sockets = self._sockets, None
        if sockets is None:
            return
        for thread in sockets.threads:
            thread.join(timeout=2.0)
        for s in (sockets.udp, sockets.tcp, sockets.upstream):
            s.close()

    @property
    def alive(self) -> bool:
        sockets = self._sockets
        return sockets is not None and all(t.is_alive() for t in sockets.threads)

    # -- UDP ------------------------------------------------------------------------------------

    def _udp_loop(self) -> None:
        sockets = self._sockets
        assert sockets is not None
        selector = selectors.DefaultSelector()
        selector.register(sockets.udp, selectors.EVENT_READ, self._drain_clients)
        selector.register(sockets.upstream, selectors.EVENT_READ, self._drain_upstream)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.1):
                    key.data(key.fileobj)
                if self._pending:
                    self._expire()
        finally:
            selector.close()

    def _drain_clients(self, sock: socket.socket) -> None:
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                answer = self.answer(data, "udp", _endpoint(addr))
                if answer is not None:
                    sock.sendto(answer, addr)
            except OSError:
                pass  # the client went away
            except Exception:
                self.stats.errors += 1
                logger.exception("DNS query from %s failed", addr[0])

    def answer(self, data: bytes, proto: str, client: tuple[str, int]) -> bytes | None:
        """The immediate answer to a client's query, or None when it was forwarded."""
        self.stats.queries += 1
        data = bytes(data)
        repeat = self._repeats.get(data[2:])
        if repeat is not None and len(data) > 12:
            key, generation = repeat
            if generation is self._judge.generation:
                cached = self.cache.answer(key, None, data[:2])
                if cached is not None:
                    self.stats.cache_hits += 1
                    return cached
            self._repeats.pop(data[2:], None)
        try:
            query = DNSRecord.parse(data)
        except (DNSError, struct.error, ValueError, IndexError, UnicodeError):
            self.stats.malformed += 1
            return None
        if query.header.qr or len(query.questions) != 1:
            self.stats.malformed += 1
            return None
        if query.header.opcode != 0:
            return error_answer(query, RCODE.NOTIMP)
        name = normal_qname(query)
        if name == PROBE_NAME:
            return error_answer(query, RCODE.NXDOMAIN)
        verdict = self._judge.judge(name, proto, Endpoint(client[0], client[1])) if name else ALLOW
        if verdict.block:
            self.stats.blocked += 1
            if verdict.learn and proto == "udp":
                self._forward(data, None, name, query)
            return blocked_answer(query, verdict.sinkhole)
        key = (name, query.q.qtype, query.q.qclass)
        cached = self.cache.answer(key, query, data[:2])
        if cached is not None:
            self.stats.cache_hits += 1
            if verdict.final and self.cache.spelled_as_cached(key, query):
                if len(self._repeats) >= MAX_REPEATS:
                    self._repeats.clear()
                self._repeats[data[2:]] = (key, self._judge.generation)
            return cached
        if proto == "tcp":
            return self._forward_tcp(data, name, key, query)
        if not self._forward(data, client, name, query):
            self.stats.servfail += 1
            return error_answer(query, RCODE.SERVFAIL)
        return None

    def _forward(self, data: bytes, client: tuple[str, int] | None, name: str, query: DNSRecord) -> bool:
        sockets = self._sockets
        if sockets is None:
            return False
        key = (name, query.q.qtype, query.q.qclass)
        with self._pending_lock:
            if len(self._pending) >= self._max_pending:
                return False
            while True:
                new_id = os.urandom(2)
                if new_id not in self._pending:
                    break
            entry = _Pending(client, data[:2], name, key, data, self._clock.monotonic(), 0)
            self._pending[new_id] = entry
        self.stats.forwarded += 1
        self._send_upstream(new_id, entry)
        return True

    def _send_upstream(self, new_id: bytes, entry: _Pending) -> None:
        sockets = self._sockets
        if sockets is None:
            return
        up = self.upstreams[entry.upstream]
        target = (f"::ffff:{up.ip}" if self._dual and ":" not in up.ip else up.ip, up.port)
        # Unreachable right now: the timeout moves on to the next upstream.
        with contextlib.suppress(OSError):
            sockets.upstream.sendto(new_id + entry.query[2:], target)

    def _drain_upstream(self, sock: socket.socket) -> None:
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                self._upstream_answer(data, addr)
            except Exception:
                self.stats.errors += 1
                logger.exception("DNS answer from %s failed", addr[0])

    def _upstream_answer(self, data: bytes, addr: tuple[str, ...]) -> None:
        host = addr[0].removeprefix("::ffff:")
        if (host, int(addr[1])) not in self._upstream_addrs or len(data) < 12:
            return  # not from an upstream we asked: ignore (spoofing)
        with self._pending_lock:
            entry = self._pending.get(data[:2])
            if entry is None:
                return
            del self._pending[data[:2]]
        try:
            response = DNSRecord.parse(data)
        except (DNSError, struct.error, ValueError, IndexError, UnicodeError):
            self.stats.malformed += 1
            return
        if not response.questions or normal_qname(response) != entry.name:
            return
        self._upstream_ok()
        self._absorb(entry.name, entry.key, response)
        sockets = self._sockets
        if entry.client is not None and sockets is not None:
            with contextlib.suppress(OSError):
                sockets.udp.sendto(entry.orig_id + data[2:], entry.client)

    def _absorb(self, name: str, key: tuple[str, int, int], response: DNSRecord) -> None:
        answers = [(str(rr.rdata), int(rr.ttl)) for rr in response.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]
        if answers:
            self._judge.learned(name, answers)
        self.cache.put(key, response)

    def _upstream_ok(self) -> None:
        self.stats.upstream_answers += 1
        self.stats.last_upstream_ok = self._clock.monotonic()

    def _expire(self) -> None:
        now = self._clock.monotonic()
        expired: list[tuple[bytes, _Pending]] = []
        with self._pending_lock:
            for new_id, entry in self._pending.items():
                if now - entry.sent < self._timeout:
                    break  # insertion order is send order
                expired.append((new_id, entry))
            for new_id, _ in expired:
                del self._pending[new_id]
            retries = []
            attempts = max(MIN_ATTEMPTS, len(self.upstreams))
            for new_id, entry in expired:
                if entry.attempt + 1 < attempts:
                    entry.attempt += 1
                    entry.upstream = entry.attempt % len(self.upstreams)
                    entry.sent = now
                    self._pending[new_id] = entry
                    retries.append((new_id, entry))
        for new_id, entry in retries:
            self._send_upstream(new_id, entry)
        for _new_id, entry in expired:
            if any(entry is e for _, e in retries):
                continue
            self.stats.upstream_timeouts += 1
            self.stats.last_upstream_failure = now
            sockets = self._sockets
            if entry.client is not None and sockets is not None:
                self.stats.servfail += 1
                try:
                    reply = error_answer(DNSRecord.parse(entry.query), RCODE.SERVFAIL)
                    sockets.udp.sendto(entry.orig_id + reply[2:], entry.client)
                except (OSError, DNSError):
                    pass

    # -- TCP ------------------------------------------------------------------------------------

    def _tcp_loop(self) -> None:
        sockets = self._sockets
        assert sockets is not None
        while not self._stop.is_set():
            try:
                conn, addr = sockets.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._tcp_slots.acquire(blocking=False):
                conn.close()  # too many clients at once: they retry
                continue
            threading.Thread(
                target=self._tcp_client, args=(conn, _endpoint(addr)), name="dns-tcp-client", daemon=True
            ).start()

    def _tcp_client(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        try:
            conn.settimeout(5.0)
            while not self._stop.is_set():
                message = _read_framed(conn)
                if message is None:
                    return
                answer = self.answer(message, "tcp", addr)
                if answer is None:
                    return
                conn.sendall(struct.pack("!H", len(answer)) + answer)
        except OSError:
            return
        except Exception:
            self.stats.errors += 1
            logger.exception("DNS over TCP from %s failed", addr[0])
        finally:
            conn.close()
            self._tcp_slots.release()

    def _forward_tcp(self, data: bytes, name: str, key: tuple[str, int, int], query: DNSRecord) -> bytes:
        self.stats.forwarded += 1
        for up in self.upstreams:
            try:
                with socket.create_connection((up.ip, up.port), timeout=self._timeout) as s:
                    s.sendall(struct.pack("!H", len(data)) + data)
                    raw = _read_framed(s)
            except OSError:
                continue
            if raw is None:
                continue
            try:
                response = DNSRecord.parse(raw)
            except (DNSError, struct.error, ValueError, IndexError, UnicodeError):
                continue
            self._upstream_ok()
            self._absorb(name, key, response)
            return raw
        self.stats.upstream_timeouts += 1
        self.stats.last_upstream_failure = self._clock.monotonic()
        self.stats.servfail += 1
        return error_answer(query, RCODE.SERVFAIL)

    # -- probes (the supervisor's) --------------------------------------------------------------

    def probe_listener(self, timeout: float = 1.0) -> bool:
        """Whether the UDP listener answers (the loop is alive and not stuck)."""
        return _ask(self.listen, PROBE_NAME, "A", timeout) is not None

    def probe_upstreams(self, timeout: float = 1.0) -> bool:
        """Whether some upstream answers at all (any rcode): the filter can serve."""
        return any(_ask(up, ".", "NS", timeout) is not None for up in self.upstreams)


def _ask(server: Endpoint, name: str, qtype: str, timeout: float) -> DNSRecord | None:
    query = DNSRecord.question(name, qtype)
    family = socket.AF_INET6 if ":" in server.ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query.pack(), (server.ip, server.port))
            data = s.recv(65535)
            response = DNSRecord.parse(data)
        except (OSError, DNSError, struct.error, ValueError, IndexError):
            return None
    return response if response.header.id == query.header.id else None


def _read_framed(sock: socket.socket) -> bytes | None:
    head = _read_exact(sock, 2)
    if head is None:
        return None
    return _read_exact(sock, struct.unpack("!H", head)[0])


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


__all__ = [
    "ALLOW",
    "ALLOW_JUDGED",
    "PROBE_NAME",
    "DnsFilterError",
    "Forwarder",
    "ForwarderStats",
    "QueryJudge",
    "Verdict",
    "blocked_answer",
]
