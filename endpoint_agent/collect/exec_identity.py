"""Who a process is right after its exec, in three small reads: the key of the per-binary answer.

A new process is named by the program it runs: the file behind /proc/<pid>/exe (device,
inode, and size/mtime/ctime so a binary rewritten in place is a new one), the path it was
started by (a hard link or a copy elsewhere can fall under another path rule) and its name
as psutil reports it (comm, or argv[0]'s basename when comm is truncated; a script's name
differs from its interpreter's). `identify` reads /proc/<pid>/stat, the exe link and a stat
of it -- no psutil, no hashing -- and returns None for a process already gone (or a zombie).

`command_line` and `holds_socket` answer the two per-process questions that the per-binary
answer can leave open (endpoint_agent.exec_triage): is a given regex in the command line, does the
process hold a socket yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from endpoint_agent.collect.cmdline import read_cmdline
from endpoint_agent.collect.proc_stat import ProcStat, read_stat

_COMM_LEN = 15  # the kernel truncates comm; psutil then takes the name from argv[0]
_DELETED = " (deleted)"
_SOCKET_PREFIX = "socket:["


@dataclass(frozen=True, slots=True)
class ExecIdentity:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    exe: str
    name: str


@dataclass(frozen=True, slots=True)
class Identified:
    stat: ProcStat
    identity: ExecIdentity | None  # None: the executable cannot be read (denied): check it fully


def identify(pid: int, *, proc_root: str = "/proc") -> Identified | None:
    """The process `pid` and the binary it runs; None when it is gone or a zombie."""
    st = read_stat(pid, proc_root=proc_root)
    if st is None or st.zombie:
        return None
    if st.kernel_thread:
        return Identified(st, None)
    link = f"{proc_root}/{pid}/exe"
    try:
        exe = os.readlink(link).split("\0", 1)[0]
        file = os.stat(link)
    except FileNotFoundError:
        return None  # exited meanwhile
    except OSError:
        return Identified(st, None)
    if exe.endswith(_DELETED) and not os.path.lexists(exe):
        exe = exe[: -len(_DELETED)]  # as psutil reports it
    name = st.comm
    if len(name) >= _COMM_LEN:
        argv0 = _argv0(pid, proc_root)
        if argv0 is not None and (extended := os.path.basename(argv0)).startswith(name):
            name = extended
    if not name:
        name = os.path.basename(exe)
    return Identified(
        st,
        ExecIdentity(file.st_dev, file.st_ino, file.st_size, file.st_mtime_ns, file.st_ctime_ns, exe, name),
    )


def command_line(pid: int, *, proc_root: str = "/proc") -> str | None:
    """The space-joined, bounded command line the engine sees (ProcessInfo.cmdline_str); None: gone."""
    args = read_cmdline(pid, proc_root=proc_root)
    return None if args is None else " ".join(args)


def holds_socket(pid: int, *, proc_root: str = "/proc") -> bool:
    """Whether `pid` holds any socket now (False when it is gone); stops at the first one."""
    try:
        entries = os.scandir(f"{proc_root}/{pid}/fd")
    except OSError:
        return False
    with entries:
        for entry in entries:
            try:
                if os.readlink(entry.path).startswith(_SOCKET_PREFIX):
                    return True
            except OSError:
                continue
    return False


def _argv0(pid: int, proc_root: str) -> str | None:
    args = read_cmdline(pid, proc_root=proc_root)
    return args[0] if args else None


__all__ = ["ExecIdentity", "Identified", "command_line", "holds_socket", "identify"]
