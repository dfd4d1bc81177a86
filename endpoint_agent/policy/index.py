"""Lookup structures that turn one attribute value into the few rules worth checking.

Each index is a *prefilter*: it returns a superset of the rules whose condition on that
attribute can hold (exact hits are exact), and the engine verifies every candidate. Lookup
cost depends on the value and on the shape of the patterns, not on how many rules there are:

* PatternIndex: literal values in a dict; globs/regexes by the rarest n-grams of literal
  text they require, so a lookup is "n-grams of the value & indexed n-grams". Patterns
  without 3 literal characters (e.g. `*`, `?x`) are "residual" and offered for every value.
* PortIndex: single ports and short ranges in a dict; long ranges in 256-port buckets.
* CidrIndex: per address family and prefix length, a dict of network number -> rules; a
  lookup costs one dict probe per distinct prefix length.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from endpoint_agent.policy.fields import PortRange
from endpoint_agent.policy.literals import MIN_NEEDLE, Requirements, grams

_LONG_GRAM = 4
_EXPAND_RANGE = 64  # ranges up to this many ports are stored port by port
_BUCKET_SHIFT = 8

Key = int  # rule index


@dataclass
class PatternIndex:
    """Candidates for one string attribute (name, path, parent, cmdline...)."""

    casefold_exact: bool  # exact keys compared in lower case (names), or as is (paths)
    fold: Callable[[str], str] = str.lower  # how values are folded for the n-gram prefilter
    # Remembers the n-gram candidates of recent values: the same names, paths and command
    # lines come back scan after scan. Bounded by entries and by characters held (command
    # lines can be long); a plain dict (single operations are atomic under the GIL).
    memo_size: int = 0
    memo_chars: int = 1 << 20
    _memo_held: int = 0
    _exact: dict[str, set[Key]] = field(default_factory=lambda: defaultdict(set))
    _pending: list[tuple[Requirements, Key]] = field(default_factory=list)
    # (n-gram size, n-gram -> keys) per size in use
    _tables: tuple[tuple[int, dict[str, set[Key]]], ...] = ()
    _residual: set[Key] = field(default_factory=set)
    _memo: dict[str, frozenset[Key]] = field(default_factory=dict)

    def add_exact(self, value: str, key: Key) -> None:
        self._exact[value.lower() if self.casefold_exact else value].add(key)

    def add_pattern(self, requirements: Requirements, key: Key) -> None:
        """A pattern that only matches strings satisfying `requirements` (see literals)."""
        usable = [clause for clause in requirements if clause and all(len(n) >= MIN_NEEDLE for n in clause)]
        if usable:
            self._pending.append((usable, key))
        else:
            self._residual.add(key)

    def freeze(self) -> None:
        """Index every pattern by the clause whose needles' n-grams the fewest patterns share."""
        counts: Counter[str] = Counter()
        for clauses, _ in self._pending:
            for gram in {g for clause in clauses for needle in clause for g in _needle_grams(needle)}:
                counts[gram] += 1
        tables: dict[int, dict[str, set[Key]]] = defaultdict(lambda: defaultdict(set))
        for clauses, key in self._pending:
            best: list[str] | None = None
            best_cost = 0
            for clause in clauses:
                chosen = [min(sorted(_needle_grams(n)), key=counts.__getitem__) for n in clause]
                cost = sum(counts[g] for g in chosen)
                if best is None or cost < best_cost:
                    best, best_cost = chosen, cost
            for gram in best or ():
                tables[len(gram)][gram].add(key)
        self._tables = tuple((size, dict(table)) for size, table in sorted(tables.items()))
        self._exact = dict(self._exact)
        self._pending = []

    @property
    def empty(self) -> bool:
        return not (self._exact or self._tables or self._residual)

    @property
    def residual_count(self) -> int:
        return len(self._residual)

    def candidates(self, values: Iterable[str], out: set[Key]) -> None:
        """Add to `out` the keys whose pattern may match any of `values`."""
        for value in values:
            if self._exact:
                hit = self._exact.get(value.lower() if self.casefold_exact else value)
                if hit:
                    out |= hit
            if self._tables and len(value) >= MIN_NEEDLE:
                out |= self._gram_candidates(value)
        if self._residual:
            out |= self._residual

    def _gram_candidates(self, value: str) -> frozenset[Key]:
        memo = self._memo
        hit = memo.get(value)
        if hit is not None:
            return hit
        folded = self.fold(value)
        found: set[Key] = set()
        for size, table in self._tables:
            for gram in grams(folded, size) & table.keys():
                found |= table[gram]
        result = frozenset(found)
        if self.memo_size:
            if len(memo) >= self.memo_size or self._memo_held + len(value) > self.memo_chars:
                memo.clear()  # cheaper than LRU bookkeeping, and rare
                self._memo_held = 0
            memo[value] = result
            self._memo_held += len(value)
        return result


def _needle_grams(needle: str) -> set[str]:
    # 4-grams where the needle is long enough (26x sparser than trigrams: fewer false
    # candidates), trigrams for 3-character needles.
    return grams(needle, _LONG_GRAM if len(needle) >= _LONG_GRAM else MIN_NEEDLE)


@dataclass
class ExactIndex:
    """Candidates by exact value (hashes, user names, protocol/direction pairs)."""

    _table: dict[object, set[Key]] = field(default_factory=lambda: defaultdict(set))

    def add(self, value: object, key: Key) -> None:
        self._table[value].add(key)

    def freeze(self) -> None:
        self._table = dict(self._table)

    @property
    def empty(self) -> bool:
        return not self._table

    def candidates(self, value: object, out: set[Key]) -> None:
        hit = self._table.get(value)
        if hit:
            out |= hit


@dataclass
class PortIndex:
    _exact: dict[int, set[Key]] = field(default_factory=lambda: defaultdict(set))
    _buckets: dict[int, list[tuple[int, int, Key]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, ports: PortRange, key: Key) -> None:
        if ports.high - ports.low < _EXPAND_RANGE:
            for port in range(ports.low, ports.high + 1):
                self._exact[port].add(key)
            return
        for bucket in range(ports.low >> _BUCKET_SHIFT, (ports.high >> _BUCKET_SHIFT) + 1):
            self._buckets[bucket].append((ports.low, ports.high, key))

    def freeze(self) -> None:
        self._exact = dict(self._exact)
        self._buckets = dict(self._buckets)

    @property
    def empty(self) -> bool:
        return not (self._exact or self._buckets)

    def candidates(self, port: int, out: set[Key]) -> None:
        hit = self._exact.get(port)
        if hit:
            out |= hit
        for low, high, key in self._buckets.get(port >> _BUCKET_SHIFT, ()):
            if low <= port <= high:
                out.add(key)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class CidrIndex:
    # (version, prefix length) -> network number (address >> host bits) -> keys
    _tables: dict[tuple[int, int], dict[int, set[Key]]] = field(default_factory=dict)
    _by_version: dict[int, tuple[tuple[int, dict[int, set[Key]]], ...]] = field(default_factory=dict)

    def add(self, network: IPNetwork, key: Key) -> None:
        table = self._tables.setdefault((network.version, network.prefixlen), defaultdict(set))
        host_bits = network.max_prefixlen - network.prefixlen
        table[int(network.network_address) >> host_bits].add(key)

    def freeze(self) -> None:
        by_version: dict[int, list[tuple[int, dict[int, set[Key]]]]] = defaultdict(list)
        for (version, prefixlen), table in sorted(self._tables.items()):
            bits = 32 if version == 4 else 128
            by_version[version].append((bits - prefixlen, dict(table)))
        self._by_version = {version: tuple(tables) for version, tables in by_version.items()}

    @property
    def empty(self) -> bool:
        return not self._tables

    def candidates(self, address: tuple[int, int], out: set[Key]) -> None:
        """`address` is (version, integer value) as made by `ip_key`."""
        version, value = address
        for host_bits, table in self._by_version.get(version, ()):
            hit = table.get(value >> host_bits)
            if hit:
                out |= hit


def ip_key(text: str) -> tuple[int, int] | None:
    """(version, integer) of an IP literal; IPv4-mapped IPv6 counts as IPv4; None if invalid."""
    text = text.split("%", 1)[0]  # fe80::1%eth0: the zone does not take part in matching
    try:
        if ":" not in text:
            return (4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return None
    if value >> 32 == _V4_MAPPED_PREFIX:
        return (4, value & 0xFFFFFFFF)
    return (6, value)


_V4_MAPPED_PREFIX = 0xFFFF  # ::ffff:a.b.c.d
