"""Severity: a rule's, else the policy default (`medium`), carried by every finding it makes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from endpoint_agent.errors import PolicyValidationError
from endpoint_agent.policy import compile_policy, evaluate, parse_policy
from endpoint_agent.types import ProcessInfo, Severity, Snapshot

POLICY = """\
name: t
version: 1
{defaults}
unapproved: {{action: report, min_uid: 1000, trust_package_manager: false}}
rules:
  - id: critical-one
    action: block
    severity: critical
    process: {{name: qbittorrent}}
  - id: plain-one
    action: report
    process: {{name: transmission}}
"""


def findings(policy_text: str) -> dict[str, Severity]:
    procs = [
        ProcessInfo(pid=10, ppid=1, name="qbittorrent", uid=1000, username="alice"),
        ProcessInfo(pid=11, ppid=1, name="transmission", uid=1000, username="alice"),
        ProcessInfo(
            pid=12, ppid=1, name="mystery-tool", exe="/home/alice/mystery-tool", uid=1000, username="alice"
        ),
    ]
    snapshot = Snapshot(datetime(2030, 1, 1, tzinfo=UTC), {p.pid: p for p in procs})
    compiled = compile_policy(parse_policy(policy_text, "t.yaml"))
    return {f.rule_id: f.severity for f in evaluate(snapshot, compiled)}


def test_rules_carry_their_severity_and_the_others_the_default() -> None:
    assert findings(POLICY.format(defaults="")) == {
        "critical-one": Severity.CRITICAL,
        "plain-one": Severity.MEDIUM,
        "unapproved-app": Severity.MEDIUM,
    }
    raised = findings(POLICY.format(defaults="defaults: {severity: low}"))
    assert (raised["plain-one"], raised["unapproved-app"], raised["critical-one"]) == (
        Severity.LOW,
        Severity.LOW,
        Severity.CRITICAL,
    )


def test_an_unknown_severity_names_the_rule_and_the_field() -> None:
    text = POLICY.format(defaults="").replace("severity: critical", "severity: urgent")
    with pytest.raises(PolicyValidationError) as err:
        parse_policy(text, "t.yaml")
    assert "critical-one" in str(err.value) and "severity" in str(err.value)
