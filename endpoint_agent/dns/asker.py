"""Who asked: the process owning the socket a DNS query came from.

The query's source address and port name a socket in the kernel's table (/proc/net/udp[6] or
tcp[6] of the agent's network namespace), which gives its inode and owning uid; the process
holding that inode is found by reading /proc/<pid>/fd links, the socket owner's uid first.
This costs milliseconds, so it runs only for queries some rule names, answers are remembered
per source socket for a moment, and lookups are rate-limited: past the limit the asker is
"unknown" (its uid still comes from the socket table), and only rules without process
conditions apply (invariant: a flood of queries cannot stall the filter for everyone).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Protocol

import psutil

from endpoint_agent.clock import Clock
from endpoint_agent.collect.cmdline import bound_cmdline
from endpoint_agent.collect.hashing import HashCache
from endpoint_agent.collect.proc_net import SocketRecord, read_connections, socket_inodes_of
from endpoint_agent.dns.addrmap import canonical_ip
from endpoint_agent.types import Endpoint, ProcessInfo

REMEMBER_SECONDS = 2.0
LOOKUPS_PER_SECOND = 50.0
UNKNOWN_NAME = "unknown"


@dataclass(frozen=True, slots=True)
class Asker:
    process: ProcessInfo  # a stand-in (pid 0, name "unknown") when `known` is False
    known: bool


class AskerSource(Protocol):
    """Who holds the socket a query came from (a double lives in the tests)."""

    def find(self, proto: str, client: Endpoint) -> Asker: ...


class AskerLookup:
    def __init__(self, clock: Clock, *, proc_root: str = "/proc", rate: float = LOOKUPS_PER_SECOND) -> None:
        self._clock = clock
        self._proc = proc_root
        self._rate = rate
        self._tokens = rate
        self._refilled = clock.monotonic()
        self._recent: dict[tuple[str, str, int], tuple[float, Asker]] = {}
        self._hashes = HashCache()
        self._lock = threading.Lock()

    def find(self, proto: str, client: Endpoint) -> Asker:
        key = (proto, canonical_ip(client.ip) or client.ip, client.port)
        now = self._clock.monotonic()
        with self._lock:
            hit = self._recent.get(key)
            if hit is not None and now - hit[0] < REMEMBER_SECONDS:
                return hit[1]
            allowed = self._take_token(now)
        asker = self._lookup(proto, key[1], client.port, full=allowed)
        with self._lock:
            if len(self._recent) > 4096:
                self._recent.clear()
            self._recent[key] = (now, asker)
        return asker

    def _take_token(self, now: float) -> bool:
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _lookup(self, proto: str, ip: str, port: int, *, full: bool) -> Asker:
        record = self._socket(proto, ip, port)
        uid = record.uid if record is not None else None
        if record is not None and record.inode and full:
            pid = self._holder(record.inode, uid)
            if pid is not None:
                info = self._process(pid)
                if info is not None:
                    return Asker(info, True)
        return Asker(ProcessInfo(pid=0, ppid=0, name=UNKNOWN_NAME, uid=uid, username=_user(uid)), False)

    def _socket(self, proto: str, ip: str, port: int) -> SocketRecord | None:
        kinds = (proto, f"{proto}6")
        for record in read_connections(None, kinds, proc_root=self._proc):
            laddr = record.laddr
            if laddr is not None and laddr.port == port and canonical_ip(laddr.ip) in (ip, "0.0.0.0", "::"):
                return record
        return None

    def _holder(self, inode: int, uid: int | None) -> int | None:
        try:
            pids = [int(e.name) for e in os.scandir(self._proc) if e.name.isdigit()]
        except OSError:
            return None
        if uid is not None:  # the socket owner's processes first: usually the first few fd walks
            pids.sort(key=lambda pid: self._uid_of(pid) != uid)
        for pid in pids:
            if inode in socket_inodes_of(pid, proc_root=self._proc):
                return pid
        return None

    def _uid_of(self, pid: int) -> int | None:
        try:
            return os.stat(os.path.join(self._proc, str(pid))).st_uid
        except OSError:
            return None

    def _process(self, pid: int) -> ProcessInfo | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                exe = proc.exe() or None
                ppid = proc.ppid()
                info = ProcessInfo(
                    pid=pid,
                    ppid=ppid,
                    name=proc.name(),
                    exe=exe,
                    cmdline=bound_cmdline(proc.cmdline()),
                    username=proc.username(),
                    uid=proc.uids().real,
                    create_time=proc.create_time(),
                    sha256=self._hashes.hash_process_exe(pid, exe).sha256 if exe else None,
                    parent_name=_name_of(ppid),
                )
        except (psutil.Error, OSError):
            return None
        return info


def _name_of(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name() if pid > 0 else None
    except (psutil.Error, OSError):
        return None


def _user(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


__all__ = ["Asker", "AskerLookup", "AskerSource"]
