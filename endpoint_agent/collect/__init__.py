"""Snapshot of this machine: processes (with executable hashes) and inet sockets.

Keep one `Collector` for the life of the service (it caches executable hashes between
scans) and call `Collector.snapshot()` once per scan; it returns an
`endpoint_agent.types.Snapshot`. `collect_snapshot()` is the one-off form.
"""

from endpoint_agent.collect.hashing import HashCache, HashResult, HashStats
from endpoint_agent.collect.snapshot import Collector, SocketSource, collect_snapshot, is_kernel_thread

__all__ = [
    "Collector",
    "HashCache",
    "HashResult",
    "HashStats",
    "SocketSource",
    "collect_snapshot",
    "is_kernel_thread",
]
