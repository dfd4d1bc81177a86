"""Which domain an address was resolved from, learned from the DNS filter's answers.

Every A/AAAA answer that passes through the forwarder teaches `address -> asked name` for the
record's TTL (at least `min_ttl`, since programs keep connections and their own caches a
little past it). The scan annotates connections with it (`Connection.domain`), so findings name
the site and domain rules catch connections made to addresses resolved earlier. Bounded: the
oldest entries go first when it is full. Thread-safe (the forwarder writes, the scan reads).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Iterable

from endpoint_agent.clock import Clock
from endpoint_agent.types import Snapshot

DEFAULT_MAX_ENTRIES = 65_536
DEFAULT_MIN_TTL = 60.0
MAX_TTL = 86_400.0


def canonical_ip(ip: str) -> str | None:
    """One text form per address: IPv4-mapped IPv6 becomes IPv4 (as sockets show them)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class AddressMap:
    def __init__(
        self, clock: Clock, *, max_entries: int = DEFAULT_MAX_ENTRIES, min_ttl: float = DEFAULT_MIN_TTL
    ) -> None:
        self._clock = clock
        self._max = max_entries
        self._min_ttl = min_ttl
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, name: str, answers: Iterable[tuple[str, int]]) -> None:
        """`answers`: (address, ttl seconds) of one response to a query for `name`."""
        now = self._clock.monotonic()
        with self._lock:
            for ip, ttl in answers:
                key = canonical_ip(ip)
                if key is None:
                    continue
                expires = now + min(max(float(ttl), self._min_ttl), MAX_TTL)
                self._entries[key] = (name, expires)
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def lookup(self, ip: str) -> str | None:
        key = canonical_ip(ip) if ":" in ip else ip
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        name, expires = entry
        if expires < self._clock.monotonic():
            with self._lock:
                self._entries.pop(key, None)
            return None
        return name

    def items(self) -> list[tuple[str, str, float]]:
        """(address, name, seconds left) of every live entry."""
        now = self._clock.monotonic()
        with self._lock:
            return [
                (ip, name, expires - now) for ip, (name, expires) in self._entries.items() if expires > now
            ]

    def annotate(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with `domain` set on connections to learned addresses."""
        if not self._entries:
            return snapshot
        changed = False
        conns = []
        for conn in snapshot.connections:
            if conn.raddr is not None and conn.domain is None:
                name = self.lookup(conn.raddr.ip)
                if name is not None:
                    conn = dataclasses.replace(conn, domain=name)
                    changed = True
            conns.append(conn)
        return dataclasses.replace(snapshot, connections=tuple(conns)) if changed else snapshot


class AnnotatingSource:
    """A snapshot source whose connections carry the learned domains (wraps the collector)."""

    def __init__(self, inner: object, addresses: AddressMap) -> None:
        self._inner = inner
        self._addresses = addresses

    def snapshot(self) -> Snapshot:
        return self._addresses.annotate(self._inner.snapshot())  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)  # the collector's stats and caches stay reachable


__all__ = ["AddressMap", "AnnotatingSource", "canonical_ip"]
