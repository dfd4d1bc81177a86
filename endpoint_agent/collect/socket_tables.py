"""The inet socket tables of each network namespace, read every scan but parsed only where they changed.

A busy machine lists thousands of sockets, and most of them are the same from one scan to the
next. `SocketTables` reads /proc/<pid>/net/{tcp,tcp6,udp,udp6} of a namespace (through one of
its processes, checked to still be in it after the read, as collect.netns does) and keys each
line by what identifies the socket (local and remote address, state, owner uid, inode). A line
seen in the previous scan reuses its parsed `SocketRecord`, and the `Connection` built from it
for its holder, as long as the namespace's set of listening sockets -- which decides every
direction -- is unchanged. Anything new goes through proc_net.parse_table and
connections.classify, so the result is exactly what those give.

Memory: a scan keeps only the lines present in it, a few hundred bytes each. Not thread-safe
(the collector that owns it serialises access).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from endpoint_agent.collect.connections import RawSocket, classify, unmap_ipv4
from endpoint_agent.collect.proc_net import TABLES, SocketRecord, parse_table
from endpoint_agent.types import Connection, Endpoint

# sl: local remote st tx:rx tr:when retrnsmt uid timeout inode (both the tcp and the udp format)
_LINE = re.compile(r"^\s*\d+:\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+\S+\s+(\d+)\s+\d+\s+(\d+)", re.M)

Listener = tuple[str, str, str, int]  # proto, family, local ip (unmapped), port
_NO_PID = -1  # `_Line.pid` before any Connection is built (None means "no holder")


@dataclass(slots=True)
class _Line:
    """One socket, and the Connection built for its (usual) single holder."""

    record: SocketRecord
    listener: Listener | None
    pid: int | None = _NO_PID
    conn: Connection | None = None
    more: dict[int | None, Connection] | None = None  # further holders (a socket shared across fork)

    def get(self, pid: int | None) -> Connection | None:
        if pid == self.pid:
            return self.conn
        return self.more.get(pid) if self.more is not None else None

    def put(self, pid: int | None, conn: Connection) -> None:
        if self.pid in (_NO_PID, pid):
            self.pid, self.conn = pid, conn
        else:
            if self.more is None:
                self.more = {}
            self.more[pid] = conn

    def forget_connections(self) -> None:
        self.pid, self.conn, self.more = _NO_PID, None, None


@dataclass(slots=True)
class _Namespace:
    lines: dict[str, _Line] = field(default_factory=dict)  # "kind local remote state uid inode" -> line
    listeners: frozenset[Listener] = frozenset()


@dataclass(frozen=True, slots=True)
class NamespaceTables:
    netns_id: str
    label: str | None  # Connection.netns: None for the agent's own namespace
    lines: tuple[_Line, ...]

    @property
    def records(self) -> list[SocketRecord]:
        return [line.record for line in self.lines]


class SocketTables:
    def __init__(self, *, proc_root: str = "/proc") -> None:
        self._proc = proc_root
        self._namespaces: dict[str, _Namespace] = {}
        self.lines_parsed = 0

    def read(
        self, netns_id: str, label: str | None, candidates: Sequence[int], kinds: Sequence[str] = TABLES
    ) -> NamespaceTables | None:
        """The tables of `netns_id`, through the first candidate still in it; None if none is."""
        texts = read_texts(netns_id, candidates, kinds, proc_root=self._proc)
        if texts is None:
            return None
        return self.parse(netns_id, label, texts)

    def parse(self, netns_id: str, label: str | None, texts: Mapping[str, str]) -> NamespaceTables:
        """The tables given as text (kind -> content); lines seen last time are not parsed again."""
        old = self._namespaces.get(netns_id)
        old_lines = old.lines if old is not None else {}
        lines: dict[str, _Line] = {}
        ordered: list[_Line] = []
        for kind, text in texts.items():
            for match in _LINE.finditer(text):
                key = " ".join((kind, *match.groups()))
                line = old_lines.get(key)
                if line is None:
                    line = self._parse_line(kind, match.group(0))
                    if line is None:
                        continue
                lines[key] = line
                ordered.append(line)
        listeners = frozenset(line.listener for line in ordered if line.listener is not None)
        if old is not None and old.listeners != listeners:
            for line in ordered:
                line.forget_connections()  # a listener came or went: directions are worked out again
        self._namespaces[netns_id] = _Namespace(lines, listeners)
        return NamespaceTables(netns_id, label, tuple(ordered))

    def retain(self, netns_ids: Iterable[str]) -> None:
        """Forget the namespaces not read in this scan (gone, or nobody lives in them now)."""
        keep = set(netns_ids)
        for ns in [ns for ns in self._namespaces if ns not in keep]:
            del self._namespaces[ns]

    def connections(
        self, tables: NamespaceTables, owners: Mapping[int, Sequence[int]], only: set[int] | None = None
    ) -> list[Connection]:
        """One Connection per socket and holding PID (pid None: no known holder), in table order.

        `only`: just the sockets these PIDs hold (the fast path).
        """
        out: list[Connection | None] = []
        missing: list[tuple[int, _Line, int | None]] = []
        for line in tables.lines:
            inode = line.record.inode
            holders: Sequence[int | None] = owners.get(inode, ()) if inode else ()
            if only is not None:
                holders = [pid for pid in holders if pid in only]
                if not holders:
                    continue
            elif not holders:
                holders = (None,)
            for pid in holders:
                conn = line.get(pid)
                if conn is None:
                    missing.append((len(out), line, pid))
                out.append(conn)  # None: filled in below
        if missing:
            # classify() with every listener of the namespace in front: it decides the directions.
            listeners = [_raw(line.record, None, tables.label) for line in tables.lines if line.listener]
            fresh = classify(
                [*listeners, *(_raw(line.record, pid, tables.label) for _, line, pid in missing)]
            )
            for (i, line, pid), conn in zip(missing, fresh[len(listeners) :], strict=True):
                line.put(pid, conn)
                out[i] = conn
        return [conn for conn in out if conn is not None]

    def _parse_line(self, kind: str, text: str) -> _Line | None:
        parsed = parse_table("\n" + text, kind)  # its first line is taken for the header
        self.lines_parsed += 1
        if not parsed:
            return None
        rec = parsed[0]
        laddr = _unmapped(rec.laddr)
        listener = None
        if laddr is not None and (rec.status == "LISTEN" if rec.proto == "tcp" else rec.raddr is None):
            listener = (rec.proto, rec.family, laddr.ip, laddr.port)
        return _Line(rec, listener)


def read_texts(
    netns_id: str, candidates: Sequence[int], kinds: Sequence[str] = TABLES, *, proc_root: str = "/proc"
) -> dict[str, str] | None:
    """The raw tables of `netns_id`, read through the first candidate still alive in it; None if none is.

    Each candidate is opened as a /proc/<pid> directory fd (immune to PID reuse) and checked to be
    in the namespace before and after the read, as collect.netns.read_namespace_tables does.
    """
    for pid in candidates:
        try:
            dir_fd = os.open(f"{proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if _netns_at(dir_fd) != netns_id:
                continue
            texts = {}
            for kind in kinds:
                text = _read_at(dir_fd, f"net/{kind}")
                if text is not None:
                    texts[kind] = text
            if _netns_at(dir_fd) == netns_id:
                return texts
        finally:
            os.close(dir_fd)
    return None


def _read_at(dir_fd: int, path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        with open(fd, encoding="ascii", closefd=True) as fh:
            return fh.read()
    except (OSError, ValueError):  # vanished, or garbage bytes
        return None


def _netns_at(dir_fd: int) -> str | None:
    try:
        return os.readlink("ns/net", dir_fd=dir_fd)
    except OSError:
        return None


def _raw(rec: SocketRecord, pid: int | None, label: str | None) -> RawSocket:
    return RawSocket(
        pid, rec.family, rec.proto, _unmapped(rec.laddr), _unmapped(rec.raddr), rec.status, label
    )


def _unmapped(ep: Endpoint | None) -> Endpoint | None:
    """As psutil reads them (connections.from_psutil): '::ffff:a.b.c.d' peers are IPv4."""
    if ep is None:
        return None
    ip = unmap_ipv4(ep.ip)
    return ep if ip == ep.ip else Endpoint(ip, ep.port)


__all__ = ["NamespaceTables", "SocketTables", "read_texts"]
