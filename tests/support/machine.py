"""A snapshot of this real machine taken with psutil directly (independent of endpoint_agent.collect).

The machine is shared with other engineers' test runs and experiments, which start real
P2P clients and stand-ins on purpose. Those are not the machine's own processes and are left
out, with everything they started: pytest runs, programs run from a temporary directory
(named stand-ins are copied there), and processes working in a temporary directory or in
this repository (benchmarks, experiments).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from datetime import UTC, datetime
from typing import Any

import psutil

from endpoint_agent.types import Connection, Direction, Endpoint, ProcessInfo, Snapshot

_TEMP_DIRS = tuple({os.path.realpath(tempfile.gettempdir()), "/tmp", "/var/tmp", "/dev/shm"})
_REPO = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
_FOREIGN_DIRS = (*_TEMP_DIRS, _REPO)
_ATTRS = ["pid", "ppid", "name", "exe", "cmdline", "username", "uids", "create_time", "cwd"]


def _under(path: object, dirs: tuple[str, ...]) -> bool:
    text = str(path or "")
    return any(text == d or text.startswith(d + "/") for d in dirs)


def _is_foreign(info: dict[str, Any]) -> bool:
    cmdline = info.get("cmdline") or []
    return (
        any("pytest" in str(part) for part in cmdline)
        or _under(info.get("exe"), _TEMP_DIRS)
        or _under(info.get("cwd"), _FOREIGN_DIRS)
    )


def _excluded(infos: dict[int, dict[str, Any]], keep: set[int]) -> set[int]:
    """Foreign processes and their descendants, except `keep`."""
    roots = {pid for pid, info in infos.items() if _is_foreign(info)}
    out: set[int] = set()
    for pid in infos:
        seen, cur = set(), pid
        while cur and cur not in seen:  # walk up towards init
            if cur in roots:
                out.add(pid)
                break
            seen.add(cur)
            cur = int(infos.get(cur, {}).get("ppid") or 0)
    return out - keep


def machine_snapshot(keep: frozenset[int] = frozenset()) -> Snapshot:
    """The machine's own processes and sockets, plus the processes in `keep`."""
    infos: dict[int, dict[str, Any]] = {}
    for proc in psutil.process_iter(_ATTRS, ad_value=None):
        infos[proc.info["pid"]] = proc.info
    excluded = _excluded(infos, set(keep))
    processes: dict[int, ProcessInfo] = {}
    for pid, info in infos.items():
        if pid in excluded:
            continue
        uids = info.get("uids")
        ppid = int(info.get("ppid") or 0)
        cmdline = tuple(info.get("cmdline") or ())
        processes[pid] = ProcessInfo(
            pid=pid,
            ppid=ppid,
            name=str(info.get("name") or ""),
            exe=str(info["exe"]) if info.get("exe") else None,
            cmdline=cmdline,
            username=str(info["username"]) if info.get("username") else None,
            uid=uids.real if uids else None,
            create_time=float(info.get("create_time") or 0.0),
            parent_name=str(infos.get(ppid, {}).get("name") or "") or None,
            kernel_thread=pid == 2 or ppid == 2,
        )
    return Snapshot(datetime.now(UTC), processes, _connections(set(processes)))


def _connections(pids: set[int]) -> tuple[Connection, ...]:
    raw: list[Any] = []
    with contextlib.suppress(psutil.AccessDenied):
        raw = psutil.net_connections("inet")
    listening = {
        (c.type, c.laddr.port) for c in raw if c.laddr and (c.status == psutil.CONN_LISTEN or not c.raddr)
    }
    out = []
    for c in raw:
        if c.pid is not None and c.pid not in pids:
            continue
        udp = c.type == socket.SOCK_DGRAM
        if c.status == psutil.CONN_LISTEN or (udp and not c.raddr):
            direction = Direction.LISTEN
        elif c.laddr and (c.type, c.laddr.port) in listening:
            direction = Direction.INBOUND
        else:
            direction = Direction.OUTBOUND
        out.append(
            Connection(
                pid=c.pid,
                family="ipv6" if c.family == socket.AF_INET6 else "ipv4",
                proto="udp" if udp else "tcp",
                laddr=Endpoint(c.laddr.ip, c.laddr.port) if c.laddr else None,
                raddr=Endpoint(c.raddr.ip, c.raddr.port) if c.raddr else None,
                status=str(c.status),
                direction=direction,
            )
        )
    return tuple(out)
