"""The forwarder's answer cache: (name, type, class) -> a response, for its TTL.

An answer is kept for the smallest TTL of its records (negative answers: the SOA minimum,
RFC 2308), capped, and served with the TTLs counted down. Packing an answer is the main
cost of a hit, so the packed bytes are kept per whole second of age and only the message id
is patched per query. Bounded; the oldest entries go first. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, DNSRecord

from endpoint_agent.clock import Clock

CacheKey = tuple[str, int, int]  # (normalised name, qtype, qclass)
MAX_CACHE_TTL = 86_400
NEGATIVE_TTL = 60  # when a negative answer has no SOA
DEFAULT_MAX_ENTRIES = 10_000


@dataclass(slots=True)
class _Entry:
    record: DNSRecord
    ttls: list[int]  # original TTL of each record, in rr/auth/ar order
    stored_at: float
    lifetime: float
    qname_text: str  # the question name as the first asker wrote it
    packed_age: int = -1
    packed: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)


def cache_ttl(response: DNSRecord) -> int | None:
    """Seconds an answer may be cached; None when it must not be (errors, truncation)."""
    if response.header.tc:
        return None
    rcode = response.header.rcode
    if rcode == RCODE.NOERROR and response.rr:
        return min(min(rr.ttl for rr in response.rr), MAX_CACHE_TTL)
    if rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
        for rr in response.auth:
            if rr.rtype == QTYPE.SOA:
                return min(rr.ttl, getattr(rr.rdata, "times", (0, 0, 0, 0, NEGATIVE_TTL))[-1], MAX_CACHE_TTL)
        return NEGATIVE_TTL
    return None


class AnswerCache:
    def __init__(self, clock: Clock, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def spelled_as_cached(self, key: CacheKey, query: DNSRecord) -> bool:
        entry = self._entries.get(key)
        return entry is not None and str(query.q.qname) == entry.qname_text

    def put(self, key: CacheKey, response: DNSRecord) -> None:
        ttl = cache_ttl(response)
        if not ttl or ttl <= 0:
            return
        ttls = [rr.ttl for rr in (*response.rr, *response.auth, *response.ar)]
        entry = _Entry(response, ttls, self._clock.monotonic(), float(ttl), str(response.q.qname))
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def answer(self, key: CacheKey, query: DNSRecord | None, raw_id: bytes) -> bytes | None:
        """The packed answer to `query` (its id `raw_id`, 2 bytes) from the cache, or None.

        `query` None: a repeat of a query already answered from this entry, spelled the same.
        """
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        age = self._clock.monotonic() - entry.stored_at
        if age >= entry.lifetime:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        whole = int(age)
        same_case = query is None or str(query.q.qname) == entry.qname_text
        with entry.lock:
            if not same_case or entry.packed_age != whole:
                record = entry.record
                for rr, ttl in zip((*record.rr, *record.auth, *record.ar), entry.ttls, strict=True):
                    rr.ttl = ttl if rr.rtype == QTYPE.OPT else max(ttl - whole, 0)  # OPT: flags
                saved = record.questions
                if query is not None and not same_case:
                    record.questions = query.questions  # echo the asker's spelling (0x20 case)
                packed = record.pack()
                record.questions = saved
                if not same_case:
                    return raw_id + packed[2:]
                entry.packed, entry.packed_age = packed, whole
            return raw_id + entry.packed[2:]


__all__ = ["AnswerCache", "CacheKey", "cache_ttl"]
