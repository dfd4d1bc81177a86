"""Node keys resolved from memory: digest -> host, for the hosts seen lately, in every process.

A key is looked up in the database once, then answered from here until its host's key changes
(re-enroll, admin reset); at start the keys of the hosts seen most lately are read in one query
(warm_keys), so a restarted server's fleet is not looked up one request at a time. A key change
reaches this process at once when it happened here (HostRepo.on_key_change), else through the
change feed within about a second (server_stub/watcher.py). Entries are trusted only while that
feed is being read: when it has not been read for a few seconds (the database unreachable),
every lookup goes to the database again, so a revoked key never outlives the feed by more than
that bound.

Both maps are bounded. Unknown digests are remembered too (a small, separate map), so an agent
repeating a stale key costs no query; a flood of made-up keys only cycles that map, and the
per-address limit (server_stub/middleware.py) already refuses such a flood before any lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from server_stub.store import NodeIdentity

DEFAULT_CAPACITY = 200_000
UNKNOWN_CAPACITY = 4_096


def _always_fresh() -> bool:
    return True


class NodeKeyCache:
    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        unknown_capacity: int = UNKNOWN_CAPACITY,
        fresh: Callable[[], bool] = _always_fresh,
    ) -> None:
        self._capacity = capacity
        self._unknown_capacity = unknown_capacity
        self.fresh = fresh  # set by the watcher: whether memory may be trusted now
        self._lock = threading.Lock()
        self._hosts: dict[str, NodeIdentity] = {}  # digest -> host (insertion order: oldest first)
        self._digest_of: dict[str, str] = {}  # host id -> digest
        self._unknown: dict[str, None] = {}
        # Bumped by every invalidation: a lookup that started before one must not store its answer.
        self._epoch = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def epoch(self) -> int:
        return self._epoch

    def get(self, digest: str) -> tuple[bool, NodeIdentity | None]:
        """(known, host): (True, host), (True, None) for a digest known to be unknown, (False, None)."""
        if not self.fresh():
            return False, None
        host = self._hosts.get(digest)
        if host is not None:
            return True, host
        return (digest in self._unknown), None

    def put(self, digest: str, host: NodeIdentity | None, epoch: int) -> None:
        """Remember a database answer obtained after `epoch` was read (dropped if stale since)."""
        with self._lock:
            if epoch != self._epoch:
                return
            if host is None:
                self._unknown[digest] = None
                if len(self._unknown) > self._unknown_capacity:
                    del self._unknown[next(iter(self._unknown))]
                return
            old = self._digest_of.get(host.host_id)
            if old is not None:
                self._hosts.pop(old, None)
            self._hosts[digest] = host
            self._digest_of[host.host_id] = digest
            if len(self._hosts) > self._capacity:
                oldest = next(iter(self._hosts))
                evicted = self._hosts.pop(oldest)
                if self._digest_of.get(evicted.host_id) == oldest:
                    del self._digest_of[evicted.host_id]

    def warm(self, entries: Iterable[tuple[str, NodeIdentity]], epoch: int) -> int:
        """Hold these database answers (read after `epoch`) up to capacity; how many were taken.

        All dropped if any key changed since `epoch`; a host already held (looked up meanwhile) keeps
        its entry.
        """
        taken = 0
        with self._lock:
            if epoch != self._epoch:
                return 0
            for digest, host in entries:
                if len(self._hosts) >= self._capacity:
                    break
                if host.host_id in self._digest_of:
                    continue
                self._hosts[digest] = host
                self._digest_of[host.host_id] = digest
                taken += 1
        return taken

    def forget(self, host_id: str) -> None:
        """This host's key changed: its old digest is no longer trusted from memory."""
        with self._lock:
            self._epoch += 1
            digest = self._digest_of.pop(host_id, None)
            if digest is not None:
                self._hosts.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._hosts.clear()
            self._digest_of.clear()
            self._unknown.clear()

    def __len__(self) -> int:
        return len(self._hosts)


def warm_keys(cache: NodeKeyCache, read: Callable[[int], list[tuple[str, NodeIdentity]]]) -> int:
    """Fill `cache` from `read(capacity)` (HostRepo.keyed); how many keys it now holds from it."""
    epoch = cache.epoch  # read before the query: an invalidation meanwhile wins
    return cache.warm(read(cache.capacity), epoch)
