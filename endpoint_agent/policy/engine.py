"""evaluate(snapshot, compiled) -> findings: pure, no I/O, deterministic.

Per process: candidate rules come from the indexes (process attributes, then each of its
connections), candidates are verified, and precedence picks what is reported:

1. Only the most specific matching rules count: sha256 > path > everything else.
2. Among those, if any is `report` or `block`, each of them yields a finding (block > report
   > allow on a tie, so an allow rule never cancels an equally specific block).
   If they are all `allow`, the process is allowed and yields no finding.
3. Any matching allow rule approves the process for the unapproved-apps check, which then
   flags processes in its scope that no allow rule approves (unless a finding at least as
   strong was already made for the process).

Rules with `network.p2p` are not indexed: they are checked for every process the snapshot has
behaviour for (`Snapshot.behaviour`, filled by collect.behaviour), scored by policy/p2p.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from endpoint_agent.policy.compile import CompiledPolicy, CompiledRule
from endpoint_agent.policy.index import ip_key
from endpoint_agent.policy.matchers import ProcessView
from endpoint_agent.policy.p2p import p2p_reason, score
from endpoint_agent.policy.reasons import (
    connection_reason,
    describe_connection,
    describe_evidence,
    process_reason,
)
from endpoint_agent.policy.unapproved import unapproved_finding
from endpoint_agent.types import (
    Connection,
    Direction,
    Evidence,
    Finding,
    P2PFeatures,
    ProcessInfo,
    RuleAction,
    Snapshot,
)

_NO_CONNECTIONS: tuple[Connection, ...] = ()
_SEVERITY = {RuleAction.ALLOW: 0, RuleAction.REPORT: 1, RuleAction.BLOCK: 2}


@dataclass(slots=True)
class _Hit:
    rule: CompiledRule
    process_evidence: tuple[Evidence, ...]
    connection: Connection | None = None
    network_evidence: tuple[Evidence, ...] = ()
    connections: int = 0
    reason: str | None = None  # set when the rule's own sentence says more (p2p)

    def add(self, conn: Connection, evidence: tuple[Evidence, ...]) -> None:
        if self.connection is None:
            self.connection, self.network_evidence = conn, evidence
        self.connections += 1


@dataclass(slots=True)
class _Context:
    compiled: CompiledPolicy
    behaviour: dict[tuple[int, float], P2PFeatures] = field(default_factory=dict)
    ip_keys: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    def raddr_key(self, conn: Connection) -> tuple[int, int] | None:
        if conn.raddr is None:
            return None
        ip = conn.raddr.ip
        try:
            return self.ip_keys[ip]
        except KeyError:
            key = self.ip_keys[ip] = ip_key(ip)
            return key


def evaluate(snapshot: Snapshot, compiled: CompiledPolicy) -> list[Finding]:
    """Findings for every process of the snapshot, ordered by pid then rule order."""
    by_pid: dict[int, list[Connection]] = {}
    if compiled.uses_connections:
        for conn in snapshot.connections:
            if conn.pid is not None:  # an unattributed socket has no process to report or stop
                by_pid.setdefault(conn.pid, []).append(conn)
    ctx = _Context(compiled, snapshot.behaviour)
    findings: list[Finding] = []
    for pid in sorted(snapshot.processes):
        findings.extend(_evaluate_process(snapshot.processes[pid], by_pid.get(pid, _NO_CONNECTIONS), ctx))
    return findings


def _evaluate_process(proc: ProcessInfo, conns: Sequence[Connection], ctx: _Context) -> list[Finding]:
    compiled = ctx.compiled
    view = ProcessView.of(proc)
    hits = _process_hits(view, conns, ctx)
    _connection_hits(view, conns, ctx, hits)
    if compiled.p2p_rules:
        _p2p_hits(view, conns, ctx, hits)
    findings: list[Finding] = []
    approved = False
    if hits:
        approved = any(hit.rule.action is RuleAction.ALLOW for hit in hits.values())
        top = max(hit.rule.specificity for hit in hits.values())
        for index in sorted(hits):
            hit = hits[index]
            if hit.rule.specificity == top and hit.rule.action is not RuleAction.ALLOW:
                findings.append(_finding(proc, hit))
    unapproved = compiled.policy.unapproved
    if not approved:
        strongest = max((f.action for f in findings), key=_SEVERITY.__getitem__, default=None)
        extra = unapproved_finding(proc, unapproved, compiled.policy.defaults, already=strongest)
        if extra is not None:
            findings.append(extra)
    return findings


def _process_hits(view: ProcessView, conns: Sequence[Connection], ctx: _Context) -> dict[int, _Hit]:
    hits: dict[int, _Hit] = {}
    rules = ctx.compiled.rules
    for index in ctx.compiled.process_index.candidates(view):
        rule = rules[index]
        evidence = rule.match_process(view)
        if evidence is None:
            continue
        if rule.network is None:
            hits[index] = _Hit(rule, evidence)
            continue
        for conn in conns:
            net_evidence = rule.network.match(conn, ctx.raddr_key(conn))
            if net_evidence is not None:
                hits.setdefault(index, _Hit(rule, evidence)).add(conn, net_evidence)
    return hits


def _connection_hits(
    view: ProcessView, conns: Sequence[Connection], ctx: _Context, hits: dict[int, _Hit]
) -> None:
    nindex = ctx.compiled.network_index
    if nindex.empty:
        return
    rules = ctx.compiled.rules
    process_checked: dict[int, tuple[Evidence, ...] | None] = {}
    for conn in conns:
        key = ctx.raddr_key(conn)
        for index in nindex.candidates(conn, key):
            rule = rules[index]
            assert rule.network is not None
            net_evidence = rule.network.match(conn, key)
            if net_evidence is None:
                continue
            if index not in process_checked:
                process_checked[index] = rule.match_process(view)
            evidence = process_checked[index]
            if evidence is not None:
                hits.setdefault(index, _Hit(rule, evidence)).add(conn, net_evidence)


def _p2p_hits(view: ProcessView, conns: Sequence[Connection], ctx: _Context, hits: dict[int, _Hit]) -> None:
    features = ctx.behaviour.get(view.proc.key)
    if features is None:
        return
    result = score(features)
    rules = ctx.compiled.rules
    for index in ctx.compiled.p2p_rules:
        rule = rules[index]
        assert rule.network is not None and rule.rule.network is not None
        cond = rule.rule.network.p2p
        assert cond is not None
        if not result.meets(cond.min_score, cond.min_peers):
            continue
        evidence = rule.match_process(view)
        if evidence is None:
            continue
        # The other network keys, if any, pick the connection; else the most telling one.
        matching = [(c, e) for c in conns if (e := rule.network.match(c, ctx.raddr_key(c))) is not None]
        if not matching and rule.rule.network.has_connection_keys:
            continue
        chosen = _representative([c for c, _ in matching], features)
        net_evidence = next(e for c, e in matching if c is chosen) if chosen is not None else ()
        p2p = Evidence(
            "p2p",
            f"score>={cond.min_score}, peers>={cond.min_peers}",
            f"score {result.score}, {result.peers} peers",
        )
        text = p2p_reason(result, features, min_score=cond.min_score, min_peers=cond.min_peers)
        shown = [e for e in net_evidence if e.attribute not in ("protocol", "direction")]
        if chosen is not None and shown:
            text += f"; connection {describe_connection(chosen)} matched " + " and ".join(
                f"{e.attribute} {e.pattern}" for e in shown
            )
        elif chosen is not None:
            text += f"; socket {describe_connection(chosen)}"
        if evidence:
            text += "; " + " and ".join(describe_evidence(e) for e in evidence)
        hits[index] = _Hit(
            rule,
            evidence,
            connection=chosen,
            network_evidence=(p2p, *net_evidence),
            connections=len(matching),
            reason=f"{text} (rule {rule.id})",
        )


def _representative(conns: Sequence[Connection], features: P2PFeatures) -> Connection | None:
    """The socket that best shows the behaviour: the peer listener, else a connection to a peer."""
    listening = set(features.listening_ports)
    samples = set(features.sample_peers)
    with_peer: Connection | None = None
    for conn in conns:
        if conn.proto != "tcp":
            continue
        if conn.direction is Direction.LISTEN and conn.laddr is not None and conn.laddr.port in listening:
            return conn
        if with_peer is None and conn.raddr is not None and str(conn.raddr) in samples:
            with_peer = conn
    return with_peer or (conns[0] if conns else None)


def _finding(proc: ProcessInfo, hit: _Hit) -> Finding:
    rule = hit.rule
    if hit.reason is not None:
        reason = hit.reason
    elif hit.connection is None:
        reason = process_reason(hit.process_evidence, rule.id)
    else:
        reason = connection_reason(
            hit.connection, hit.network_evidence, hit.process_evidence, rule.id, hit.connections
        )
    return Finding(
        rule_id=rule.id,
        category=rule.category,
        action=rule.action,
        process=proc,
        reason=reason,
        evidence=hit.network_evidence + hit.process_evidence,
        connection=hit.connection,
        message=rule.message,
        help_url=rule.help_url,
        enforce=rule.enforce,
        severity=rule.severity,
    )
