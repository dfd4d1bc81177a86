"""A read-only path -> name map in about 12 bytes per entry (the package index's owners).

Why: a dpkg system lists 100,000+ files; as a dict of path strings that is ~20 MB of a process
that should stay small all day, and building it scatters path strings over the heap, which the
allocator then cannot give back. `PathTableBuilder` keeps only flat arrays while it is fed: a
64-bit keyed BLAKE2b digest of each path and a small integer naming its value; `PathTable`
looks a path up by binary search over the sorted digests. The key is random per table, so
nobody can craft a path that collides with a listed one; an accidental collision (about 1 in
10^14 per lookup at this size) is the only way a path that is not listed can be found.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from bisect import bisect_left
from collections.abc import Callable

Digest = Callable[[str], int]


def _digester(key: bytes) -> Digest:
    blake2b = hashlib.blake2b

    def digest(path: str) -> int:
        raw = path.encode("utf-8", "surrogateescape")
        return int.from_bytes(blake2b(raw, digest_size=8, key=key).digest(), "little")

    return digest


class PathTable:
    """Built by `PathTableBuilder.build()`; `get(path)` like a dict's."""

    def __init__(self, key: bytes, digests: array[int], values: array[int], names: list[str]) -> None:
        self._digest = _digester(key)
        self._digests = digests
        self._values = values
        self._names = names

    def get(self, path: str, default: str | None = None) -> str | None:
        digest = self._digest(path)
        i = bisect_left(self._digests, digest)
        if i < len(self._digests) and self._digests[i] == digest:
            return self._names[self._values[i]]
        return default

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.get(path) is not None

    def __len__(self) -> int:
        return len(self._digests)


class PathRemovals:
    """The paths to leave out (a set-like `add`), kept as digests."""

    def __init__(self, digest: Digest) -> None:
        self._digest = digest
        self.digests: set[int] = set()

    def add(self, path: str) -> None:
        self.digests.add(self._digest(path))


class PathTableBuilder:
    """Collects (path, value) pairs like `dict.setdefault` (the first value of a path wins)."""

    def __init__(self) -> None:
        self._key = os.urandom(16)
        self._digest = _digester(self._key)
        self._digests = array("Q")
        self._values = array("I")
        self._names: dict[str, int] = {}
        self.removed = PathRemovals(self._digest)  # paths dropped at build(), whenever they were added

    def setdefault(self, path: str, value: str) -> None:
        self._digests.append(self._digest(path))
        self._values.append(self._names.setdefault(value, len(self._names)))

    def build(self) -> PathTable:
        digests, values, removed = self._digests, self._values, self.removed.digests
        order = sorted(range(len(digests)), key=digests.__getitem__)  # stable: the first addition first
        out_digests, out_values = array("Q"), array("I")
        last = None
        for i in order:
            d = digests[i]
            if d != last and d not in removed:
                out_digests.append(d)
                out_values.append(values[i])
            last = d
        return PathTable(self._key, out_digests, out_values, list(self._names))


__all__ = ["PathRemovals", "PathTable", "PathTableBuilder"]
