"""One picture of the machine: every process and every inet socket, through psutil.

Processes come from one `psutil.process_iter` pass with an attribute list, sockets from one
`psutil.net_connections(kind="inet")` call. A process that exits during the pass is skipped
(psutil drops it); an attribute psutil may not read (access denied, zombie) is left empty
and the record is marked `partial` -- normal on any machine, never an error. Only a scan
that cannot start at all (no /proc, psutil broken) raises `CollectError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil

from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.collect.cmdline import bound_cmdline
from endpoint_agent.collect.connections import RawSocket, classify, from_psutil
from endpoint_agent.collect.hashing import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, HashCache, HashStats
from endpoint_agent.collect.package_trust import PackageResolver, system_package_resolver
from endpoint_agent.errors import CollectError
from endpoint_agent.types import ProcessInfo, Snapshot

logger = logging.getLogger(__name__)

_LINUX = sys.platform.startswith("linux")
# Linux task flag set on kernel threads only (include/linux/sched.h); psutil does not expose it.
_PF_KTHREAD = 0x00200000
# Stands for "psutil could not read this attribute" (psutil's ad_value), distinct from None.
_DENIED: Any = object()
# The psutil attributes one scan reads per process (the benchmark's raw baseline reads the same).
PROCESS_ATTRS = ["pid", "ppid", "name", "exe", "cmdline", "username", "create_time"]
if hasattr(psutil.Process, "uids"):
    PROCESS_ATTRS.append("uids")

# Where sockets come from: given the processes of this scan, every inet socket (see `Collector`).
SocketSource = Callable[[Mapping[int, ProcessInfo]], Iterable[RawSocket]]


class Collector:
    """Takes snapshots; keeps what is worth keeping between them.

    Cached between scans: the SHA-256 of each executable, keyed by the file's version
    (device, inode, size, mtime, ctime) in a bounded LRU (`hash_max_entries`), so a binary
    is read once while it stays the same file and is read again as soon as it is replaced
    or modified. Entries whose file vanished are pruned after each scan. Executables larger
    than `hash_max_bytes` are not hashed (sha256=None): reading a multi-GB image every time
    it changes would stall the scan, and no policy names such a hash in practice.
    Nothing else is cached: names, command lines and owners can change between scans.

    `sockets` replaces the default socket source (one `psutil.net_connections` call, which
    sees the agent's network namespace only), e.g. with a reader of every namespace; its
    RawSockets carry `netns` so directions are inferred per namespace. It must not raise
    for single processes; an OSError or CollectError from it fails the scan.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        hash_max_bytes: int = DEFAULT_MAX_BYTES,
        hash_max_entries: int = DEFAULT_MAX_ENTRIES,
        sockets: SocketSource | None = None,
        packages: PackageResolver | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._hashes = HashCache(max_bytes=hash_max_bytes, max_entries=hash_max_entries)
        self._sockets = sockets or self._psutil_sockets
        # Which system package owns each executable (ProcessInfo.package): dpkg/rpm when present.
        self._packages = packages or system_package_resolver()
        self._warned_connections = False
        # The scan job, the exec watcher and policy sync's dry run share one collector.
        self._lock = threading.RLock()

    @property
    def hash_stats(self) -> HashStats:
        return self._hashes.stats

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> Snapshot:
        taken_at = self._clock.now()
        processes = self._processes()
        try:
            connections = classify(self._sockets(processes))
        except OSError as exc:
            raise CollectError(f"cannot list network connections: {exc}") from exc
        self._hashes.end_scan()
        return Snapshot(taken_at=taken_at, processes=processes, connections=connections)

    def snapshot_of(self, pids: Iterable[int]) -> Snapshot:
        """Just these processes (the live ones) and their inet sockets (see collect.api)."""
        with self._lock:
            return self._snapshot_of(pids)

    def _snapshot_of(self, pids: Iterable[int]) -> Snapshot:
        taken_at = self._clock.now()
        records: dict[int, dict[str, Any]] = {}
        for pid in sorted(set(pids)):
            try:
                records[pid] = psutil.Process(pid).as_dict(PROCESS_ATTRS, ad_value=_DENIED)
            except (psutil.Error, OSError):
                continue  # gone (or unreadable) already: nothing to judge
        names = {pid: _name(info) for pid, info in records.items()}
        for info in records.values():
            ppid = info.get("ppid")
            if isinstance(ppid, int) and ppid not in names:
                with contextlib.suppress(psutil.Error, OSError):
                    names[ppid] = psutil.Process(ppid).name()
        processes = {pid: self._process(pid, info, names) for pid, info in records.items()}
        try:
            # Classified with every socket (another process's listener decides "inbound").
            connections = tuple(c for c in classify(self._sockets(processes)) if c.pid in processes)
        except OSError as exc:
            raise CollectError(f"cannot list network connections: {exc}") from exc
        return Snapshot(taken_at=taken_at, processes=processes, connections=connections)

    def forget(self, pid: int) -> None:
        """Nothing is kept per process here (hashes are kept per file, pruned after each scan)."""

    def binary_digest(self, pid: int, exe: str) -> str | None:
        """SHA-256 of what `pid` runs (the shared hash cache), for the per-binary exec triage."""
        with self._lock:
            return self._hashes.hash_process_exe(pid, exe).sha256

    def binary_package(self, pid: int, exe: str) -> str | None:
        """The system package owning what `pid` runs, for the per-binary exec triage."""
        return self._packages.package_of(pid, exe) if self._packages is not None else None

    # Every psutil scan reads every process and hashes every executable: there is nothing to skip.
    def track(
        self, *, rewalk_scans: int, trusted: Callable[[], bool], sockets_wanted: Callable[[], bool]
    ) -> None:
        return None

    def distrust(self) -> None:
        return None

    @property
    def tracking(self) -> dict[str, int | bool] | None:
        return None

    def hash_status(self) -> dict[str, object]:
        return {"wanted": True}

    # -- processes ---------------------------------------------------------------------------

    def _processes(self) -> dict[int, ProcessInfo]:
        records: dict[int, dict[str, Any]] = {}
        try:
            for proc in psutil.process_iter(PROCESS_ATTRS, ad_value=_DENIED):
                records[proc.pid] = proc.info
        except (psutil.Error, OSError) as exc:
            raise CollectError(f"cannot list processes: {exc}") from exc
        names = {pid: _name(info) for pid, info in records.items()}
        return {pid: self._process(pid, info, names) for pid, info in records.items()}

    def _process(self, pid: int, info: dict[str, Any], names: dict[int, str]) -> ProcessInfo:
        denied = {key for key, value in info.items() if value is _DENIED}
        exe = _text(info.get("exe"))
        args = info.get("cmdline") if "cmdline" not in denied else None
        cmdline = bound_cmdline([str(a) for a in args or ()])  # a few KiB at most (collect.cmdline)
        ppid = info["ppid"] if isinstance(info.get("ppid"), int) else 0
        uids = info.get("uids")
        create_time = info["create_time"] if isinstance(info.get("create_time"), float) else 0.0
        sha256 = None
        hash_failed = False
        if exe:
            result = self._hashes.hash_process_exe(pid, exe)
            sha256 = result.sha256
            hash_failed = sha256 is None and not result.too_large
        return ProcessInfo(
            pid=pid,
            ppid=ppid,
            name=names[pid],
            exe=exe,
            cmdline=cmdline,
            username=_text(info.get("username")),
            uid=uids.real if uids is not None and uids is not _DENIED else None,
            create_time=create_time,
            sha256=sha256,
            parent_name=names.get(ppid) if ppid != pid else None,
            kernel_thread=is_kernel_thread(pid, ppid, exe, cmdline),
            partial=bool(denied) or hash_failed,
            package=self._packages.package_of(pid, exe) if self._packages is not None else None,
        )

    # -- connections -------------------------------------------------------------------------

    def _psutil_sockets(self, processes: Mapping[int, ProcessInfo]) -> Iterable[RawSocket]:
        try:
            raw = psutil.net_connections(kind="inet")
        except psutil.AccessDenied:
            # macOS without root: only the sockets of processes we may inspect.
            if not self._warned_connections:
                logger.warning("system-wide socket list denied; collecting per process (incomplete)")
                self._warned_connections = True
            return list(_per_process_sockets(processes))
        except (psutil.Error, OSError, RuntimeError) as exc:
            # RuntimeError: psutil's parser on a malformed /proc/net line.
            raise CollectError(f"cannot list network connections: {exc}") from exc
        return [sock for conn in raw if (sock := from_psutil(conn)) is not None]


def _per_process_sockets(processes: Mapping[int, ProcessInfo]) -> Iterable[RawSocket]:
    for pid in processes:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.Error, OSError):
            continue
        for conn in conns:
            sock = from_psutil(conn)
            if sock is not None:
                yield RawSocket(pid, sock.family, sock.proto, sock.laddr, sock.raddr, sock.status)


def is_kernel_thread(pid: int, ppid: int, exe: str | None, cmdline: tuple[str, ...]) -> bool:
    """Whether `pid` is a kernel thread (never a user-space program).

    A user-space process always has an executable and nearly always a command line, so only
    processes with neither are examined. On Linux the kernel's own PF_KTHREAD flag in
    /proc/<pid>/stat decides; the classic heuristic (kthreadd is pid 2 and parent of all
    kernel threads) is only a fallback, because inside a PID namespace pid 2 is an ordinary
    process.
    """
    if exe or cmdline:
        return False
    if not _LINUX:
        return pid == 0
    flags = _task_flags(pid)
    if flags is not None:
        return bool(flags & _PF_KTHREAD)
    return pid == 2 or ppid in (0, 2)


def _task_flags(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # The name (field 2) may contain spaces and ')'; fields resume after the last ')'.
        # After it: state ppid pgrp session tty_nr tpgid flags.
        return int(data[data.rindex(b")") + 2 :].split()[6])
    except (OSError, ValueError, IndexError):
        return None


def _name(info: dict[str, Any]) -> str:
    """psutil's name, else the executable's basename (name denied), else ""."""
    exe = _text(info.get("exe"))
    return _text(info.get("name")) or (os.path.basename(exe) if exe else "")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def collect_snapshot() -> Snapshot:
    """One snapshot with a fresh (empty) hash cache; services keep a `Collector` instead."""
    return Collector().snapshot()
