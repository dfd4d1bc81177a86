"""Which policy version a host gets during a staged rollout (pure functions).

A host is in version V's rollout iff bucket(host_id, V) < V's percent. The bucket is derived
from sha256, so every server process (and every restart) puts a host in the same bucket, and
raising the percent only adds hosts. A host gets the newest published version whose rollout
includes it; with the previous version at 100% that is "the newest, else the previous".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def bucket(host_id: str, version: int) -> int:
    """Stable 0-99 for (host, version); independent across versions so each rollout draws anew."""
    digest = hashlib.sha256(f"{host_id}\x00{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def choose_version(host_id: str, rollouts: Iterable[tuple[int, int]]) -> int | None:
    """The version for this host from (version, percent) pairs; None when no rollout includes it."""
    for version, percent in sorted(rollouts, reverse=True):
        if bucket(host_id, version) < percent:
            return version
    return None
