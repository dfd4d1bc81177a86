"""The exec-time split: what the gate may deny before exec, with the engine's precedence."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from endpoint_agent.policy import compile_policy, evaluate, parse_policy
from endpoint_agent.policy.exec_time import ExecFile, ExecTimePolicy, ExecUser, Verdict
from endpoint_agent.types import ProcessInfo, RuleAction, Snapshot

SHA = "ab" * 32


def exec_policy(rules: str, *, unapproved: str = "", mode: str = "enforce") -> ExecTimePolicy:
    text = f"name: t\nversion: 3\nmode: {mode}\n{unapproved}rules:\n{rules}"
    return ExecTimePolicy.of(compile_policy(parse_policy(text, "t.yaml")))


def test_name_path_and_hash_rules_deny_with_a_finding() -> None:
    p = exec_policy(
        "  - {id: by-name, action: block, process: {name: 'qbittorrent*'}}\n"
        "  - {id: by-path, action: block, process: {path: '/home/*/Downloads/*'}}\n"
        f"  - {{id: by-hash, action: block, process: {{sha256: '{SHA}'}}}}\n"
    )
    j = p.judge(ExecFile("/opt/qb/qbittorrent-nox"))
    assert j.verdict is Verdict.DENY and j.rule_id == "by-name"
    assert (
        j.finding is not None and j.finding.action is RuleAction.BLOCK and "qbittorrent" in j.finding.reason
    )
    assert p.judge(ExecFile("/home/ann/Downloads/tool")).rule_id == "by-path"
    assert p.judge(ExecFile("/usr/bin/x", sha256=SHA)).rule_id == "by-hash"
    assert p.judge(ExecFile("/usr/bin/x", sha256="cd" * 32)).verdict is Verdict.ALLOW
    assert p.uses_sha256 and p.can_deny


def test_post_exec_conditions_are_not_decided_at_exec() -> None:
    p = exec_policy(
        "  - {id: cmd, action: block, process: {name: curl, cmdline: 'evil'}}\n"
        "  - {id: net, action: block, process: {name: aria2c}, network: {remote_port: 6881}}\n"
        "  - {id: parent, action: block, process: {name: sh, parent: sshd}}\n"
    )
    assert not p.can_deny
    for path in ("/usr/bin/curl", "/usr/bin/aria2c", "/bin/sh"):
        assert p.judge(ExecFile(path)).verdict is Verdict.ALLOW


def test_a_more_specific_rule_that_may_allow_prevents_the_deny() -> None:
    # post-exec, a path allow rule beats a name block; if its other conditions are unknown, so is the outcome
    p = exec_policy(
        "  - {id: block-tool, action: block, process: {name: tool}}\n"
        "  - {id: allow-ours, action: allow, process: {path: /opt/ours/tool, cmdline: '--safe'}}\n"
    )
    assert p.judge(ExecFile("/opt/ours/tool")).verdict is Verdict.ALLOW
    assert p.judge(ExecFile("/tmp/tool")).verdict is Verdict.DENY
    # an equally specific report rule does not cancel a block (engine precedence)
    q = exec_policy(
        "  - {id: block-tool, action: block, process: {name: tool}}\n"
        "  - {id: see-tool, action: report, process: {name: 'to*'}}\n"
    )
    assert q.judge(ExecFile("/tmp/tool")).verdict is Verdict.DENY


def test_user_rules_ask_for_the_user() -> None:
    p = exec_policy("  - {id: no-games, action: block, process: {name: game, user: kid}}\n")
    assert p.judge(ExecFile("/usr/games/game")).verdict is Verdict.NEED_USER
    denied = p.judge(ExecFile("/usr/games/game"), ExecUser(1001, "kid"))
    assert denied.verdict is Verdict.DENY and denied.depends_on_user
    assert p.judge(ExecFile("/usr/games/game"), ExecUser(1002, "parent")).verdict is Verdict.ALLOW


UNAPPROVED = "unapproved: {action: block, min_uid: 1000}\n"


def test_unapproved_block_trusts_packages_and_allow_rules() -> None:
    p = exec_policy(
        "  - {id: ok, action: allow, process: {path: '/opt/approved/*'}}\n", unapproved=UNAPPROVED
    )
    user = ExecUser(1000, "ann")
    assert p.judge(ExecFile("/home/ann/bin/thing")).verdict is Verdict.NEED_USER
    denied = p.judge(ExecFile("/home/ann/bin/thing"), user)
    assert denied.verdict is Verdict.DENY and denied.rule_id == "unapproved-app"
    assert p.judge(ExecFile("/usr/bin/ls", package="coreutils")).verdict is Verdict.ALLOW
    assert p.judge(ExecFile("/opt/approved/app"), user).verdict is Verdict.ALLOW
    assert (
        p.judge(ExecFile("/home/ann/bin/thing"), ExecUser(0, "root")).verdict is Verdict.ALLOW
    )  # out of scope


def test_unapproved_is_left_to_post_exec_when_an_allow_rule_needs_the_command_line() -> None:
    p = exec_policy(
        "  - {id: ok, action: allow, process: {cmdline: '^python3 -m approved'}}\n", unapproved=UNAPPROVED
    )
    assert not p.can_deny
    assert p.judge(ExecFile("/home/ann/bin/thing"), ExecUser(1000, "ann")).verdict is Verdict.ALLOW


@pytest.mark.parametrize("path", ["/opt/qb/qbittorrent", "/home/ann/Downloads/x", "/usr/bin/ls"])
def test_every_exec_time_deny_is_a_post_exec_block(path: str) -> None:
    """Soundness: what the gate denies, the engine would block for the same executable."""
    rules = (
        "  - {id: by-name, action: block, process: {name: 'qbittorrent*'}}\n"
        "  - {id: by-path, action: block, process: {path: '/home/*/Downloads/*'}}\n"
        "  - {id: allow-ls, action: allow, process: {path: /usr/bin/ls}}\n"
    )
    p = exec_policy(rules)
    compiled = compile_policy(parse_policy(f"name: t\nversion: 3\nmode: enforce\nrules:\n{rules}", "t"))
    proc = ProcessInfo(pid=5, ppid=1, name=path.rsplit("/", 1)[1], exe=path, uid=1000, username="ann")
    findings = evaluate(Snapshot(taken_at=datetime.now(UTC), processes={5: proc}), compiled)
    blocked = {f.rule_id for f in findings if f.action is RuleAction.BLOCK}
    judged = p.judge(ExecFile(path), ExecUser(1000, "ann"))
    if judged.verdict is Verdict.DENY:
        assert judged.rule_id in blocked
    else:
        assert not blocked


@pytest.mark.parametrize("name", ["default.yaml", "examples/allowlist.yaml", "examples/remote-access.yaml"])
def test_shipped_policies_reach_the_gate_intact(name: str) -> None:
    """The gate process receives the policy as JSON (policy.model_dump) and validates it again."""
    from pathlib import Path

    from endpoint_agent.policy import Policy, load_policy_file

    policy = load_policy_file(Path(__file__).resolve().parents[3] / "policies" / name)
    again = Policy.model_validate(policy.model_dump(mode="json"))
    assert again == policy
    split = ExecTimePolicy.of(compile_policy(again))
    # every rule the gate may deny on its own is a block rule of the policy
    blocks = {r.id for r in policy.rules if r.action is RuleAction.BLOCK and r.enabled}
    assert set(split.exact_block_rules) <= blocks
