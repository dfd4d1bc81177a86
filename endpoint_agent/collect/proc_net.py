"""Inet sockets straight from /proc/<pid>/net/{tcp,tcp6,udp,udp6}, and socket inodes per process.

Why not psutil.net_connections(): it always walks every fd of every process to attribute
sockets, and it only sees the agent's own network namespace. Reading the tables of one
namespace (through any process inside it) and mapping inodes only for the PIDs a caller
asks about (new processes, unknown inodes) is cheaper and works across namespaces (netns.py).

Addresses are printed by the kernel as the raw in-memory bytes of the address, one 32-bit
word at a time with %08X, so on a little-endian machine every 4-byte word is byte-reversed.
Results match psutil: IPv4-mapped peers of dual-stack sockets read "::ffff:a.b.c.d", a zero
port means no address (None), TCP states use psutil's names, UDP sockets have status "NONE".
Vanished processes and denied reads (OSError) give empty results, never an exception.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from endpoint_agent.types import Endpoint

TABLES: tuple[str, ...] = ("tcp", "tcp6", "udp", "udp6")
_KINDS: dict[str, tuple[str, str]] = {
    "tcp": ("ipv4", "tcp"),
    "tcp6": ("ipv6", "tcp"),
    "udp": ("ipv4", "udp"),
    "udp6": ("ipv6", "udp"),
}
# include/net/tcp_states.h, named like psutil's CONN_* constants.
TCP_STATES: dict[int, str] = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
}
STATUS_NONE = "NONE"
_WORDS_NATIVE = "<4I" if sys.byteorder == "little" else ">4I"
_SOCKET_PREFIX = "socket:["


@dataclass(frozen=True, slots=True)
class SocketRecord:
    """One row of a /proc/net table. Field names match collect.connections.RawSocket."""

    family: str  # "ipv4" | "ipv6"
    proto: str  # "tcp" | "udp"
    laddr: Endpoint | None
    raddr: Endpoint | None
    status: str
    inode: int  # 0 for TIME_WAIT / request sockets that no process owns any more
    uid: int


def _decode_ip(hex_ip: str, family: str, cache: dict[str, str]) -> str:
    ip = cache.get(hex_ip)
    if ip is None:
        raw = bytes.fromhex(hex_ip)
        if family == "ipv4" and len(raw) == 4:
            ip = socket.inet_ntop(socket.AF_INET, raw[::-1] if sys.byteorder == "little" else raw)
        elif family == "ipv6" and len(raw) == 16:
            ip = socket.inet_ntop(socket.AF_INET6, struct.pack(_WORDS_NATIVE, *struct.unpack(">4I", raw)))
        else:
            raise ValueError(f"{len(raw)}-byte address in an {family} table")
        cache[hex_ip] = ip
    return ip


def _decode_endpoint(field: str, family: str, cache: dict[str, str]) -> Endpoint | None:
    hex_ip, _, hex_port = field.partition(":")
    port = int(hex_port, 16)
    return Endpoint(_decode_ip(hex_ip, family, cache), port) if port else None


def parse_table(text: str, kind: str) -> list[SocketRecord]:
    """Parse the content of one table ("tcp", "tcp6", "udp" or "udp6"); bad lines are skipped."""
    family, proto = _KINDS[kind]
    cache: dict[str, str] = {}
    out: list[SocketRecord] = []
    for line in text.splitlines()[1:]:  # the first line is the header
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            state = int(fields[3], 16)
            status = TCP_STATES.get(state, STATUS_NONE) if proto == "tcp" else STATUS_NONE
            out.append(
                SocketRecord(
                    family=family,
                    proto=proto,
                    laddr=_decode_endpoint(fields[1], family, cache),
                    raddr=_decode_endpoint(fields[2], family, cache),
                    status=status,
                    inode=int(fields[9]),
                    uid=int(fields[7]),
                )
            )
        except ValueError:  # bad hex, a wrong-length address
            continue
    return out


def read_connections(
    pid: int | None = None, kinds: Sequence[str] = TABLES, *, proc_root: str = "/proc"
) -> list[SocketRecord]:
    """All sockets of the network namespace of `pid` (None: the caller's own namespace)."""
    base = os.path.join(proc_root, "net") if pid is None else os.path.join(proc_root, str(pid), "net")
    out: list[SocketRecord] = []
    for kind in kinds:
        try:
            with open(os.path.join(base, kind), encoding="ascii") as fh:
                text = fh.read()
        except (OSError, ValueError):  # vanished pid, EACCES, no IPv6, garbage bytes
            continue
        out.extend(parse_table(text, kind))
    return out


def read_connections_at(proc_pid_fd: int, kinds: Sequence[str] = TABLES) -> list[SocketRecord]:
    """Like read_connections, through an open /proc/<pid> directory fd (immune to PID reuse)."""
    out: list[SocketRecord] = []
    for kind in kinds:
        try:
            fd = os.open(f"net/{kind}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_pid_fd)
        except OSError:
            continue
        try:
            with open(fd, encoding="ascii", closefd=True) as fh:
                text = fh.read()
        except (OSError, ValueError):
            continue
        out.extend(parse_table(text, kind))
    return out


def socket_inodes_of(pid: int, *, proc_root: str = "/proc") -> set[int]:
    """Inodes of the sockets `pid` holds open (any family); empty if it vanished or is denied."""
    inodes: set[int] = set()
    fd_dir = os.path.join(proc_root, str(pid), "fd")
    try:
        entries = os.scandir(fd_dir)
    except OSError:
        return inodes
    with entries:
        for entry in entries:
            try:
                target = os.readlink(entry.path)
            except OSError:  # the fd was closed since the listing
                continue
            if target.startswith(_SOCKET_PREFIX) and target.endswith("]"):
                try:
                    inodes.add(int(target[len(_SOCKET_PREFIX) : -1]))
                except ValueError:
                    continue
    return inodes


def inode_owners(pids: Iterable[int], *, proc_root: str = "/proc") -> dict[int, list[int]]:
    """socket inode -> the PIDs (ascending) holding it, for the given PIDs only."""
    owners: dict[int, list[int]] = {}
    for pid in sorted(set(pids)):
        for inode in socket_inodes_of(pid, proc_root=proc_root):
            owners.setdefault(inode, []).append(pid)
    return owners
