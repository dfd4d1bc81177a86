"""evaluate_query(compiled, process, query) -> findings: what the policy says about one DNS query.

Pure, like the engine. The DNS filter asks it for a query whose name some rule names (see
`CompiledPolicy.query_index`): only rules whose network conditions a query can show (domain
and domain_list; protocol/direction are ignored, since a query is neither the later
connection's protocol nor direction) are judged here; a rule that also names ports or
addresses waits for the connection, which the scan judges with the learned domain.
The asking process must match the rule's `process` conditions and not its `unless`; when the
asker is unknown (its socket vanished) only rules without process conditions apply.
"""

from __future__ import annotations

from endpoint_agent.policy.compile import CompiledPolicy
from endpoint_agent.policy.matchers import ProcessView
from endpoint_agent.policy.reasons import describe_evidence
from endpoint_agent.types import Connection, Evidence, Finding, ProcessInfo, RuleAction


def query_rules(compiled: CompiledPolicy, name: str) -> set[int]:
    """Indexes of the rules that may judge a query for `name` (normalised); usually empty."""
    out: set[int] = set()
    if not compiled.query_index.empty:
        compiled.query_index.candidates(name, out)
    return out


def evaluate_query(
    compiled: CompiledPolicy,
    process: ProcessInfo,
    query: Connection,
    *,
    asker_known: bool = True,
    candidates: set[int] | None = None,
) -> list[Finding]:
    """Findings (report/block, rule order) for a query; `query.domain` is the asked name.

    With `asker_known` False, `process` is a stand-in (the socket's owner was not found) and only
    rules without process conditions apply.
    """
    name = query.domain
    if name is None:
        return []
    indexes = query_rules(compiled, name) if candidates is None else candidates
    view = ProcessView.of(process)
    findings: list[Finding] = []
    for index in sorted(indexes):
        rule = compiled.rules[index]
        if rule.action is RuleAction.ALLOW or rule.network is None:
            continue
        pattern = rule.network.domain_match(name)
        if pattern is None:
            continue
        evidence: tuple[Evidence, ...] | None
        if not asker_known:
            evidence = () if rule.process is None and rule.unless is None else None
        else:
            evidence = rule.match_process(view)
        if evidence is None:
            continue
        domain = Evidence("domain", pattern, name)
        text = f"DNS query for {name!r} matched domain {pattern!r}"
        if evidence:
            text += "; " + " and ".join(describe_evidence(e) for e in evidence)
        findings.append(
            Finding(
                rule_id=rule.id,
                category=rule.category,
                action=rule.action,
                process=process,
                reason=f"{text} (rule {rule.id})",
                evidence=(domain, *evidence),
                connection=query,
                message=rule.message,
                help_url=rule.help_url,
                enforce=rule.enforce,
            )
        )
    return findings


__all__ = ["evaluate_query", "query_rules"]
