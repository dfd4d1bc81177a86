"""Verifying one rule's conditions against one process or connection, with evidence.

The indexes only propose candidates; these matchers decide, and say why: every condition
that held becomes an Evidence(attribute, pattern, value).
"""

from __future__ import annotations

import ntpath
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from endpoint_agent.policy.domains import DomainSet
from endpoint_agent.policy.fields import PortRange
from endpoint_agent.policy.index import IPNetwork
from endpoint_agent.policy.literals import compile_glob, glob_is_literal
from endpoint_agent.policy.model import NetworkConditions, ProcessConditions
from endpoint_agent.types import Connection, Evidence, ProcessInfo

_MAX_EVIDENCE_TEXT = 120
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def exe_basename(exe: str | None) -> str | None:
    if not exe:
        return None
    base = ntpath.basename(exe) if _WINDOWS_PATH.match(exe) else posixpath.basename(exe)
    return base or None


@dataclass(frozen=True, slots=True)
class ProcessView:
    """A process with the folded forms the matchers compare, computed once per evaluation."""

    proc: ProcessInfo
    name_l: str
    exe_name: str | None
    exe_name_l: str | None
    sha256: str | None
    cmdline: str
    parent_l: str | None

    @classmethod
    def of(cls, proc: ProcessInfo) -> ProcessView:
        exe_name = exe_basename(proc.exe)
        return cls(
            proc=proc,
            name_l=proc.name.lower(),
            exe_name=exe_name,
            exe_name_l=exe_name.lower() if exe_name else None,
            sha256=proc.sha256.lower() if proc.sha256 else None,
            cmdline=proc.cmdline_str,
            parent_l=proc.parent_name.lower() if proc.parent_name else None,
        )


class GlobSet:
    """Any-of a rule's globs for one attribute; literals by dict, the rest by regex."""

    __slots__ = ("_casefold", "_literals", "_patterns")

    def __init__(self, patterns: tuple[str, ...], *, casefold: bool) -> None:
        self._casefold = casefold
        self._literals: dict[str, str] = {}
        self._patterns: list[tuple[str, Callable[[str], object]]] = []
        for pattern in patterns:
            if glob_is_literal(pattern):
                self._literals.setdefault(pattern.lower() if casefold else pattern, pattern)
            else:
                self._patterns.append((pattern, compile_glob(pattern, casefold=casefold).match))

    def first_match(self, value: str) -> str | None:
        """The pattern that matches `value` (already lower-cased for case-folding sets)."""
        hit = self._literals.get(value)
        if hit is not None:
            return hit
        for pattern, match in self._patterns:
            if match(value):
                return pattern
        return None


class ProcessMatcher:
    """All of a `process:` (or `unless:`) block; None when any condition fails."""

    __slots__ = ("_cmdline", "_name", "_parent", "_path", "_sha256", "_user")

    def __init__(self, cond: ProcessConditions) -> None:
        self._sha256 = frozenset(cond.sha256) if cond.sha256 else None
        self._user = frozenset(cond.user) if cond.user else None
        self._name = GlobSet(cond.name, casefold=True) if cond.name else None
        self._path = GlobSet(cond.path, casefold=False) if cond.path else None
        self._parent = GlobSet(cond.parent, casefold=True) if cond.parent else None
        self._cmdline = [(p, re.compile(p)) for p in cond.cmdline] if cond.cmdline else None

    def match(self, view: ProcessView) -> tuple[Evidence, ...] | None:
        proc = view.proc
        evidence: list[Evidence] = []
        # Cheapest checks first: a candidate usually fails on the first one.
        if self._sha256 is not None:
            if view.sha256 is None or view.sha256 not in self._sha256:
                return None
            evidence.append(Evidence("sha256", view.sha256, view.sha256))
        if self._user is not None:
            if proc.username is None or proc.username not in self._user:
                return None
            evidence.append(Evidence("user", proc.username, proc.username))
        if self._name is not None:
            found = self._match_name(view)
            if found is None:
                return None
            evidence.append(found)
        if self._path is not None:
            pattern = self._path.first_match(proc.exe) if proc.exe else None
            if pattern is None or proc.exe is None:
                return None
            evidence.append(Evidence("path", pattern, proc.exe))
        if self._parent is not None:
            pattern = self._parent.first_match(view.parent_l) if view.parent_l else None
            if pattern is None:
                return None
            evidence.append(Evidence("parent", pattern, proc.parent_name or ""))
        if self._cmdline is not None:
            found = self._match_cmdline(view.cmdline)
            if found is None:
                return None
            evidence.append(found)
        return tuple(evidence)

    def _match_name(self, view: ProcessView) -> Evidence | None:
        assert self._name is not None
        pattern = self._name.first_match(view.name_l)
        if pattern is not None:
            return Evidence("name", pattern, view.proc.name)
        if view.exe_name_l and view.exe_name_l != view.name_l:
            pattern = self._name.first_match(view.exe_name_l)
            if pattern is not None:
                return Evidence("exe_name", pattern, view.exe_name or "")
        return None

    def _match_cmdline(self, cmdline: str) -> Evidence | None:
        assert self._cmdline is not None
        for pattern, regex in self._cmdline:
            m = regex.search(cmdline)
            if m:
                # The matched text, not the whole command line: arguments may hold secrets.
                return Evidence("cmdline", pattern, _clip(m.group(0)))
        return None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_EVIDENCE_TEXT else text[: _MAX_EVIDENCE_TEXT - 3] + "..."


@dataclass(frozen=True, slots=True)
class _Net:
    version: int
    host_bits: int
    number: int
    text: str


class NetworkMatcher:
    """All of a `network:` block against one connection; None when any condition fails."""

    __slots__ = ("_directions", "_domains", "_local_port", "_protocols", "_remote_address", "_remote_port")

    def __init__(self, cond: NetworkConditions, domains: tuple[str, ...] = ()) -> None:
        # `domains`: the rule's patterns with its domain lists expanded (Policy.rule_domains).
        self._domains = DomainSet.of(domains) if cond.has_domains else None
        self._remote_port = cond.remote_port
        self._local_port = cond.local_port
        self._remote_address = tuple(_net(n) for n in cond.remote_address) if cond.remote_address else None
        self._protocols = frozenset(p.value for p in cond.protocol) if cond.protocol else None
        self._directions = frozenset(d.value for d in cond.direction) if cond.direction else None

    def domain_match(self, name: str) -> str | None:
        """The rule's domain pattern matching `name` (normalised), or None."""
        return self._domains.first_match(name) if self._domains is not None else None

    def match(self, conn: Connection, raddr_key: tuple[int, int] | None) -> tuple[Evidence, ...] | None:
        evidence: list[Evidence] = []
        if self._protocols is not None:
            if conn.proto not in self._protocols:
                return None
            evidence.append(Evidence("protocol", conn.proto, conn.proto))
        if self._directions is not None:
            if conn.direction.value not in self._directions:
                return None
            evidence.append(Evidence("direction", conn.direction.value, conn.direction.value))
        if self._local_port is not None:
            found = _port_match(self._local_port, conn.laddr.port if conn.laddr else None)
            if found is None:
                return None
            evidence.append(Evidence("local_port", found, str(conn.laddr.port if conn.laddr else "")))
        if self._remote_port is not None:
            found = _port_match(self._remote_port, conn.raddr.port if conn.raddr else None)
            if found is None:
                return None
            evidence.append(Evidence("remote_port", found, str(conn.raddr.port if conn.raddr else "")))
        if self._remote_address is not None:
            net = _address_match(self._remote_address, raddr_key)
            if net is None or conn.raddr is None:
                return None
            evidence.append(Evidence("remote_address", net, conn.raddr.ip))
        if self._domains is not None:
            pattern = self._domains.first_match(conn.domain) if conn.domain else None
            if pattern is None or conn.domain is None:
                return None
            evidence.append(Evidence("domain", pattern, conn.domain))
        return tuple(evidence)


def _port_match(ranges: tuple[PortRange, ...], port: int | None) -> str | None:
    if port is None:
        return None
    for ports in ranges:
        if ports.low <= port <= ports.high:
            return str(ports)
    return None


def _net(network: IPNetwork) -> _Net:
    host_bits = network.max_prefixlen - network.prefixlen
    return _Net(network.version, host_bits, int(network.network_address) >> host_bits, str(network))


def _address_match(nets: tuple[_Net, ...], key: tuple[int, int] | None) -> str | None:
    if key is None:
        return None
    version, value = key
    for net in nets:
        if net.version == version and value >> net.host_bits == net.number:
            return net.text
    return None
