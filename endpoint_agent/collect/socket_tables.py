"""The inet socket tables of each network namespace, read every scan but parsed only where they changed.

A busy machine lists thousands of sockets, and most of them are the same from one scan to the
next. `SocketTables` reads /proc/<pid>/net/{tcp,tcp6,udp,udp6} of a namespace (through one of
its processes, checked to still be in it after the read, as collect.netns does) and keys each
line by what identifies the socket (local and remote address, state, owner uid, inode). A line
seen in the previous scan reuses its parsed `SocketRecord`, and the `Connection`s built from it
(per holding PID), as long as the namespace's set of listening sockets -- which decides every
direction -- is unchanged. Anything new goes through proc_net.parse_table and
connections.classify, so the result is exactly what those give.

Memory: each scan keeps only the lines present in it. Not thread-safe (the collector owns it).
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

Key = tuple[str, tuple[str, ...]]  # table kind, (local, remote, state, uid, inode) as printed
Listener = tuple[str, str, str, int]  # proto, family, local ip (unmapped), port


@dataclass(slots=True)
class _Line:
    record: SocketRecord
    raw: RawSocket  # pid None; the namespace label filled in
    listener: Listener | None
    conns: dict[int | None, Connection] = field(default_factory=dict)  # holder pid -> its Connection


@dataclass(slots=True)
class _Namespace:
    lines: dict[Key, _Line] = field(default_factory=dict)
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
        old = self._namespaces.get(netns_id)
        old_lines = old.lines if old is not None else {}
        lines: dict[Key, _Line] = {}
        ordered: list[_Line] = []
        for kind, text in texts.items():
            for match in _LINE.finditer(text):
                key: Key = (kind, match.groups())
                line = old_lines.get(key)
                if line is None:
                    line = self._parse_line(kind, match.group(0), label)
                    if line is None:
                        continue
                lines[key] = line
                ordered.append(line)
        listeners = frozenset(line.listener for line in ordered if line.listener is not None)
        if old is not None and old.listeners != listeners:
            for line in ordered:
                line.conns.clear()  # a listener came or went: directions must be worked out again
        self._namespaces[netns_id] = _Namespace(lines, listeners)
        return NamespaceTables(netns_id, label, tuple(ordered))

    def retain(self, netns_ids: Iterable[str]) -> None:
        """Forget the namespaces not read in this scan (they are gone, or nobody lives in them now)."""
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
                conn = line.conns.get(pid)
                if conn is None:
                    missing.append((len(out), line, pid))
                out.append(conn)  # None: filled in below
        if missing:
            listeners = [line.raw for line in tables.lines if line.listener is not None]
            fresh = classify([*listeners, *(line.raw._replace(pid=pid) for _, line, pid in missing)])
            for (i, line, pid), conn in zip(missing, fresh[len(listeners) :], strict=True):
                line.conns[pid] = conn
                out[i] = conn
        return [conn for conn in out if conn is not None]

    def _parse_line(self, kind: str, text: str, label: str | None) -> _Line | None:
        parsed = parse_table("\n" + text, kind)  # the first line is taken for the header
        self.lines_parsed += 1
        if not parsed:
            return None
        rec = parsed[0]
        raw = RawSocket(None, rec.family, rec.proto, _unmapped(rec.laddr), _unmapped(rec.raddr), rec.status, label)
        listener = None
        is_listener = rec.status == "LISTEN" if rec.proto == "tcp" else rec.raddr is None
        if is_listener and raw.laddr is not None:
            listener = (rec.proto, rec.family, raw.laddr.ip, raw.laddr.port)
        return _Line(rec, raw, listener)


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


def _unmapped(ep: Endpoint | None) -> Endpoint | None:
    """As psutil reads them (connections.from_psutil): '::ffff:a.b.c.d' peers are IPv4."""
    if ep is None:
        return None
    ip = unmap_ipv4(ep.ip)
    return ep if ip == ep.ip else Endpoint(ip, ep.port)


__all__ = ["NamespaceTables", "SocketTables", "read_texts"]
