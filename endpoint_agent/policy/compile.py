"""Compiling a policy once into indexes, so evaluation cost does not grow with the rule count.

Every enabled rule is indexed by exactly one of its conditions, its *anchor*: the condition
whose index is most selective (a hash or exact name before a port, a port before a glob, a
glob before a user name...). At evaluation, the indexes propose candidate rules for a
process or a connection, and only the candidates are verified condition by condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from endpoint_agent.policy.domains import DomainIndex
from endpoint_agent.policy.index import CidrIndex, ExactIndex, PatternIndex, PortIndex
from endpoint_agent.policy.literals import (
    fold_for_regex,
    glob_is_literal,
    glob_requirements,
    regex_requirements,
)
from endpoint_agent.policy.matchers import NetworkMatcher, ProcessMatcher, ProcessView
from endpoint_agent.policy.model import Policy, Rule, Specificity
from endpoint_agent.types import Connection, Direction, Enforce, Evidence, RuleAction, Severity


class Anchor(StrEnum):
    SHA256 = "sha256"
    PATH = "path"
    NAME = "name"
    REMOTE_ADDRESS = "remote_address"
    DOMAIN = "domain"
    REMOTE_PORT = "remote_port"
    LOCAL_PORT = "local_port"
    PARENT = "parent"
    CMDLINE = "cmdline"
    USER = "user"
    PROTOCOL_DIRECTION = "protocol/direction"
    P2P = "p2p"  # judged per process from its behaviour; checked for every process that has some


_NETWORK_ANCHORS = frozenset(
    {Anchor.REMOTE_ADDRESS, Anchor.DOMAIN, Anchor.REMOTE_PORT, Anchor.LOCAL_PORT, Anchor.PROTOCOL_DIRECTION}
)
# Cost classes for choosing an anchor (lower is more selective).
# n-gram lookups remembered per attribute: names, paths and command lines recur scan after scan.
_MEMO = 8192
_EXACT, _NARROW, _GRAM, _BROAD, _KIND, _RESIDUAL = 0, 1, 2, 3, 5, 9


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    rule: Rule
    category: str
    severity: Severity
    message: str
    help_url: str | None
    specificity: Specificity
    anchor: Anchor
    process: ProcessMatcher | None
    unless: ProcessMatcher | None
    network: NetworkMatcher | None
    enforce: Enforce = Enforce.PROCESS
    domains: tuple[str, ...] = ()  # normalised patterns, domain lists expanded

    @property
    def id(self) -> str:
        return self.rule.id

    @property
    def action(self) -> RuleAction:
        return self.rule.action

    def match_process(self, view: ProcessView) -> tuple[Evidence, ...] | None:
        """Evidence when the process conditions hold and `unless` does not; else None."""
        evidence = self.process.match(view) if self.process is not None else ()
        if evidence is None:
            return None
        if self.unless is not None and self.unless.match(view) is not None:
            return None
        return evidence


@dataclass
class ProcessIndex:
    sha256: ExactIndex = field(default_factory=ExactIndex)
    user: ExactIndex = field(default_factory=ExactIndex)
    name: PatternIndex = field(default_factory=lambda: PatternIndex(casefold_exact=True, memo_size=_MEMO))
    path: PatternIndex = field(default_factory=lambda: PatternIndex(casefold_exact=False, memo_size=_MEMO))
    parent: PatternIndex = field(default_factory=lambda: PatternIndex(casefold_exact=True, memo_size=_MEMO))
    cmdline: PatternIndex = field(
        default_factory=lambda: PatternIndex(casefold_exact=False, fold=fold_for_regex, memo_size=_MEMO)
    )

    def freeze(self) -> None:
        for index in (self.sha256, self.user, self.name, self.path, self.parent, self.cmdline):
            index.freeze()

    def candidates(self, view: ProcessView) -> set[int]:
        out: set[int] = set()
        proc = view.proc
        if view.sha256 and not self.sha256.empty:
            self.sha256.candidates(view.sha256, out)
        if proc.username and not self.user.empty:
            self.user.candidates(proc.username, out)
        if not self.name.empty:
            names = (
                (view.name_l,)
                if not view.exe_name_l or view.exe_name_l == view.name_l
                else (
                    view.name_l,
                    view.exe_name_l,
                )
            )
            self.name.candidates(names, out)
        if proc.exe and not self.path.empty:
            self.path.candidates((proc.exe,), out)
        if view.parent_l and not self.parent.empty:
            self.parent.candidates((view.parent_l,), out)
        if not self.cmdline.empty:
            self.cmdline.candidates((view.cmdline,), out)
        return out

    @property
    def residual_count(self) -> int:
        return sum(i.residual_count for i in (self.name, self.path, self.parent, self.cmdline))


@dataclass
class NetworkIndex:
    remote_address: CidrIndex = field(default_factory=CidrIndex)
    remote_port: PortIndex = field(default_factory=PortIndex)
    local_port: PortIndex = field(default_factory=PortIndex)
    kind: ExactIndex = field(default_factory=ExactIndex)  # (proto, direction)
    domain: DomainIndex = field(default_factory=DomainIndex)

    def freeze(self) -> None:
        for index in (self.remote_address, self.remote_port, self.local_port, self.kind, self.domain):
            index.freeze()

    @property
    def empty(self) -> bool:
        return all(
            i.empty for i in (self.remote_address, self.remote_port, self.local_port, self.kind, self.domain)
        )

    def candidates(self, conn: Connection, raddr_key: tuple[int, int] | None) -> set[int]:
        out: set[int] = set()
        if conn.raddr is not None:
            if raddr_key is not None and not self.remote_address.empty:
                self.remote_address.candidates(raddr_key, out)
            if not self.remote_port.empty:
                self.remote_port.candidates(conn.raddr.port, out)
        if conn.laddr is not None and not self.local_port.empty:
            self.local_port.candidates(conn.laddr.port, out)
        if not self.kind.empty:
            self.kind.candidates((conn.proto, conn.direction.value), out)
        if conn.domain is not None and not self.domain.empty:
            self.domain.candidates(conn.domain, out)
        return out


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy ready for `evaluate`; build it once per policy with `compile_policy`."""

    policy: Policy
    rules: tuple[CompiledRule, ...]
    process_index: ProcessIndex
    network_index: NetworkIndex
    # True when some rule looks at connections (else evaluate skips grouping them).
    uses_connections: bool
    # Rules with a `network.p2p` condition, in rule order (never in the indexes above).
    p2p_rules: tuple[int, ...] = ()
    # Rules judged on a DNS query (domain conditions and nothing a query cannot show), by name.
    query_index: DomainIndex = field(default_factory=DomainIndex)
    # `enforce: connection` rules, in rule order (the agent's nftables table).
    connection_rules: tuple[int, ...] = ()

    @property
    def uses_sha256(self) -> bool:
        """Whether any rule looks at executables' SHA-256 (else the collector does not hash at all)."""
        return any(
            (r.rule.process is not None and r.rule.process.sha256 is not None)
            or (r.rule.unless is not None and r.rule.unless.sha256 is not None)
            for r in self.rules
        )

    @property
    def uses_domains(self) -> bool:
        """Whether the DNS filter has anything to judge or learn for this policy."""
        return any(rule.domains for rule in self.rules)

    @property
    def p2p_window_scans(self) -> int | None:
        """The behaviour window the agent must keep: the largest of the p2p rules (None: none)."""
        windows = [
            net.p2p.window_scans for i in self.p2p_rules if (net := self.rules[i].rule.network) and net.p2p
        ]
        return max(windows, default=None)

    @property
    def stats(self) -> dict[str, int]:
        """Counts worth a warning: residual patterns are checked against every process."""
        anchors: dict[str, int] = {}
        for rule in self.rules:
            anchors[rule.anchor.value] = anchors.get(rule.anchor.value, 0) + 1
        return {"rules": len(self.rules), "residual_patterns": self.process_index.residual_count, **anchors}


def compile_policy(policy: Policy) -> CompiledPolicy:
    pindex = ProcessIndex()
    nindex = NetworkIndex()
    compiled: list[CompiledRule] = []
    query_index = DomainIndex()
    for rule in policy.rules:
        if not rule.enabled:
            continue
        index = len(compiled)
        anchor = _choose_anchor(rule)
        domains = policy.rule_domains(rule)
        _register(rule, anchor, index, pindex, nindex, domains)
        if rule.network is not None and rule.network.domain_only:
            for pattern in domains:
                query_index.add(pattern, index)
        compiled.append(
            CompiledRule(
                index=index,
                rule=rule,
                category=rule.category or policy.defaults.category,
                severity=rule.severity or policy.defaults.severity,
                message=rule.message or policy.defaults.message,
                help_url=rule.help_url or policy.defaults.help_url,
                specificity=rule.specificity,
                anchor=anchor,
                process=ProcessMatcher(rule.process) if rule.process else None,
                unless=ProcessMatcher(rule.unless) if rule.unless else None,
                network=NetworkMatcher(rule.network, domains) if rule.network else None,
                enforce=rule.enforce,
                domains=domains,
            )
        )
    pindex.freeze()
    nindex.freeze()
    return CompiledPolicy(
        policy=policy,
        rules=tuple(compiled),
        process_index=pindex,
        network_index=nindex,
        uses_connections=any(r.network is not None for r in compiled),
        p2p_rules=tuple(r.index for r in compiled if r.anchor is Anchor.P2P),
        query_index=query_index,
        connection_rules=tuple(r.index for r in compiled if r.enforce is Enforce.CONNECTION),
    )


def _glob_cost(patterns: tuple[str, ...], literal_cost: int) -> int:
    worst = literal_cost
    for pattern in patterns:
        if glob_is_literal(pattern):
            continue
        worst = max(worst, _GRAM if glob_requirements(pattern) else _RESIDUAL)
    return worst


def _choose_anchor(rule: Rule) -> Anchor:
    if rule.network is not None and rule.network.p2p is not None:
        return Anchor.P2P
    options: list[tuple[int, int, Anchor]] = []
    proc = rule.process
    if proc is not None:
        if proc.sha256:
            options.append((_EXACT, 0, Anchor.SHA256))
        if proc.path:
            options.append((_glob_cost(proc.path, _EXACT), 1, Anchor.PATH))
        if proc.name:
            options.append((_glob_cost(proc.name, _EXACT), 2, Anchor.NAME))
        if proc.parent:
            options.append((_glob_cost(proc.parent, _GRAM), 6, Anchor.PARENT))
        if proc.cmdline:
            cost = _GRAM if all(regex_requirements(p) for p in proc.cmdline) else _RESIDUAL
            options.append((cost, 7, Anchor.CMDLINE))
        if proc.user:
            options.append((_BROAD, 8, Anchor.USER))
    net = rule.network
    if net is not None:
        if net.remote_address:
            wide = any(n.prefixlen < (8 if n.version == 4 else 16) for n in net.remote_address)
            options.append((_BROAD if wide else _NARROW, 3, Anchor.REMOTE_ADDRESS))
        if net.has_domains:
            options.append((_NARROW, 3, Anchor.DOMAIN))
        if net.remote_port:
            wide = any(p.high - p.low >= 4096 for p in net.remote_port)
            options.append((_BROAD if wide else _NARROW, 4, Anchor.REMOTE_PORT))
        if net.local_port:
            wide = any(p.high - p.low >= 4096 for p in net.local_port)
            options.append((_BROAD if wide else _NARROW, 5, Anchor.LOCAL_PORT))
        options.append((_KIND, 9, Anchor.PROTOCOL_DIRECTION))
    return min(options)[2]


def _register(
    rule: Rule,
    anchor: Anchor,
    key: int,
    pindex: ProcessIndex,
    nindex: NetworkIndex,
    domains: tuple[str, ...] = (),
) -> None:
    proc, net = rule.process, rule.network
    if anchor is Anchor.P2P:
        return  # CompiledPolicy.p2p_rules
    if anchor in _NETWORK_ANCHORS:
        assert net is not None
        if anchor is Anchor.REMOTE_ADDRESS:
            for network in net.remote_address or ():
                nindex.remote_address.add(network, key)
        elif anchor is Anchor.DOMAIN:
            for pattern in domains:
                nindex.domain.add(pattern, key)
        elif anchor is Anchor.REMOTE_PORT:
            for ports in net.remote_port or ():
                nindex.remote_port.add(ports, key)
        elif anchor is Anchor.LOCAL_PORT:
            for ports in net.local_port or ():
                nindex.local_port.add(ports, key)
        else:
            protocols = [p.value for p in net.protocol] if net.protocol else ["tcp", "udp"]
            directions = [d.value for d in net.direction] if net.direction else [d.value for d in Direction]
            for protocol in protocols:
                for direction in directions:
                    nindex.kind.add((protocol, direction), key)
        return
    assert proc is not None
    if anchor is Anchor.SHA256:
        for digest in proc.sha256 or ():
            pindex.sha256.add(digest, key)
    elif anchor is Anchor.USER:
        for user in proc.user or ():
            pindex.user.add(user, key)
    elif anchor is Anchor.CMDLINE:
        for pattern in proc.cmdline or ():
            pindex.cmdline.add_pattern(regex_requirements(pattern), key)
    else:
        target = {Anchor.PATH: pindex.path, Anchor.NAME: pindex.name, Anchor.PARENT: pindex.parent}[anchor]
        globs = {Anchor.PATH: proc.path, Anchor.NAME: proc.name, Anchor.PARENT: proc.parent}[anchor] or ()
        for pattern in globs:
            if glob_is_literal(pattern):
                target.add_exact(pattern, key)
            else:
                target.add_pattern(glob_requirements(pattern), key)
