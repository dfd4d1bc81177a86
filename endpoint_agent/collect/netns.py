"""Sockets of every network namespace on the machine, joined to the processes that hold them.

Why: psutil only sees the agent's own network namespace, so a peer-to-peer client started
with `unshare --net`, inside a container or a VPN namespace would be invisible. Any process
inside a namespace exposes that namespace's tables at /proc/<pid>/net/*, so reading them
through one representative process per namespace covers all of them without setns().
Socket inodes are unique machine-wide (one sockfs), so the fd inodes of all processes join
sockets to owners across namespaces in one map.

Each representative is read through an open /proc/<pid> directory fd and checked again after
the read: a process that exited (or became a zombie, which has no namespaces) in the meantime
fails the check, its possibly empty tables are discarded and the next process is tried. A PID
reused by another process cannot slip in because the directory fd stays bound to the old one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from endpoint_agent.collect.proc_net import TABLES, SocketRecord, inode_owners, read_connections_at

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NetnsSocket:
    """One socket and one process holding it; pid None when none of the given PIDs holds it."""

    pid: int | None
    record: SocketRecord


@dataclass(frozen=True, slots=True)
class NamespaceConnections:
    netns_id: str  # as the kernel names it: "net:[4026531840]"
    is_host: bool  # the agent's own namespace
    pids: tuple[int, ...]  # the given PIDs that live in it, ascending
    records: tuple[NetnsSocket, ...]  # a socket shared by N processes appears N times


def netns_of(pid: int | str, *, proc_root: str = "/proc") -> str | None:
    """The network namespace id of `pid` ("self" for the caller); None if it vanished or is denied."""
    try:
        return os.readlink(os.path.join(proc_root, str(pid), "ns", "net"))
    except OSError:
        return None


def all_pids(*, proc_root: str = "/proc") -> list[int]:
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def group_by_netns(pids: Iterable[int], *, proc_root: str = "/proc") -> dict[str, list[int]]:
    """netns id -> PIDs (ascending) in it; vanished and denied PIDs are left out."""
    groups: dict[str, list[int]] = {}
    for pid in sorted(set(pids)):
        ns = netns_of(pid, proc_root=proc_root)
        if ns is not None:
            groups.setdefault(ns, []).append(pid)
    return groups


def read_namespace_tables(
    netns_id: str, candidates: Sequence[int], kinds: Sequence[str] = TABLES, *, proc_root: str = "/proc"
) -> list[SocketRecord] | None:
    """The tables of `netns_id`, read through the first candidate still alive in it; None if none is."""
    for pid in candidates:
        try:
            dir_fd = os.open(os.path.join(proc_root, str(pid)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if _netns_at(dir_fd) != netns_id:
                continue
            records = read_connections_at(dir_fd, kinds)
            if _netns_at(dir_fd) == netns_id:  # still alive after the read: the tables are its
                return records
        finally:
            os.close(dir_fd)
    return None


def _netns_at(dir_fd: int) -> str | None:
    try:
        return os.readlink("ns/net", dir_fd=dir_fd)
    except OSError:
        return None


def collect_all_namespaces(
    pids: Iterable[int] | None = None,
    *,
    owners: Mapping[int, Sequence[int]] | None = None,
    kinds: Sequence[str] = TABLES,
    proc_root: str = "/proc",
) -> list[NamespaceConnections]:
    """Every namespace that one of `pids` (None: all processes) lives in, host namespace first.

    `owners` (socket inode -> PIDs) lets a caller that caches fd inodes per process skip the
    fd walk; by default the fds of all `pids` are read.
    """
    pid_list = all_pids(proc_root=proc_root) if pids is None else sorted(set(pids))
    host = netns_of("self", proc_root=proc_root)
    groups = group_by_netns(pid_list, proc_root=proc_root)
    if owners is None:
        owners = inode_owners((pid for members in groups.values() for pid in members), proc_root=proc_root)
    result: list[NamespaceConnections] = []
    for ns, members in groups.items():
        records = read_namespace_tables(ns, members, kinds, proc_root=proc_root)
        if records is None:
            logger.debug("network namespace %s: every process in it exited during the read", ns)
            continue
        joined: list[NetnsSocket] = []
        for record in records:
            holders = owners.get(record.inode, ()) if record.inode else ()
            if holders:
                joined.extend(NetnsSocket(pid=pid, record=record) for pid in holders)
            else:
                joined.append(NetnsSocket(pid=None, record=record))
        result.append(
            NamespaceConnections(netns_id=ns, is_host=ns == host, pids=tuple(members), records=tuple(joined))
        )
    result.sort(key=lambda item: (not item.is_host, item.netns_id))
    return result
