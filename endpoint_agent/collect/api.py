"""One collector API over the two implementations: what the service, `scan` and the dry run all use.

    collector = open_collector()          # once: it keeps its caches between scans
    snapshot = collector.snapshot()       # every process, and the inet sockets of every network namespace
    collector.snapshot_of([pid])          # just these processes (a program right after its exec)
    collector.forget(pid)                 # the process exited

On Linux with a readable /proc it is the incremental reader (collect.incremental); elsewhere the
psutil one (collect.snapshot, with every network namespace where the OS has them). Both give the
same `Snapshot` and are safe to share between the scan job, the exec watcher and policy sync.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from endpoint_agent.clock import Clock
from endpoint_agent.collect.netns_sockets import all_namespace_sockets
from endpoint_agent.collect.snapshot import Collector
from endpoint_agent.types import Snapshot


class MachineCollector(Protocol):
    def snapshot(self) -> Snapshot:
        """Every process and every inet socket; CollectError when no snapshot can be taken at all."""
        ...

    def snapshot_of(self, pids: Iterable[int]) -> Snapshot:
        """Just these processes (the live ones) and their inet sockets."""
        ...

    def forget(self, pid: int) -> None:
        """The process exited: drop what is cached about it."""
        ...

    def binary_digest(self, pid: int, exe: str) -> str | None:
        """SHA-256 of what `pid` runs, from the collector's hash cache (the exec triage asks)."""
        ...

    def binary_package(self, pid: int, exe: str) -> str | None:
        """The system package owning what `pid` runs (the exec triage asks)."""
        ...

    def track(
        self, *, rewalk_scans: int, trusted: Callable[[], bool], sockets_wanted: Callable[[], bool]
    ) -> None:
        """Exec, exit and rename events keep the cache current while `trusted()`: scans may skip work."""
        ...

    def distrust(self) -> None:
        """Events were lost: the next scan reads everything again."""
        ...

    @property
    def tracking(self) -> Mapping[str, int | bool] | None:
        """What status shows of tracking (None: every scan reads every process)."""
        ...

    def hash_status(self) -> Mapping[str, object]:
        """For status.json: whether executables are hashed, and the hashing queue."""
        ...


def open_collector(
    *, clock: Clock | None = None, want_hashes: Callable[[], bool] | None = None, proc_root: str = "/proc"
) -> MachineCollector:
    """The incremental /proc reader where Linux allows it, else psutil (see the module docstring).

    `want_hashes()`: whether executables need a SHA-256 now (the active policy has a sha256 rule).
    """
    from endpoint_agent.collect.incremental import IncrementalCollector, linux_procfs_available

    if linux_procfs_available(proc_root):
        return IncrementalCollector(clock=clock, proc_root=proc_root, want_hashes=want_hashes)
    return machine_collector(clock=clock)


def machine_collector(*, clock: Clock | None = None) -> Collector:
    """The psutil collector: processes with their owning system package (collect.package_trust,
    for the unapproved check) and, on Linux, the sockets of every network namespace labelled
    with their namespace (collect.netns_sockets), so a client in a container or behind
    `unshare --net` is seen."""
    if sys.platform.startswith("linux"):
        return Collector(clock=clock, sockets=all_namespace_sockets)
    return Collector(clock=clock)


__all__ = ["MachineCollector", "machine_collector", "open_collector"]
