"""BinaryRules: what a process running a given binary must still be looked at for.

The soundness check runs every data-driven policy case (tests/cases): each finding the engine
makes must be one the per-binary answer would have led the exec path to look for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.policy import Policy, compile_policy, evaluate
from endpoint_agent.policy.binary_rules import BinaryRules
from tests.support.casefile import case_files, load_case

SHA = hashlib.sha256(b"x").hexdigest()


def rules(*rule_list: dict[str, Any], **extra: Any) -> BinaryRules:
    body = {"name": "t", "version": 1, "rules": list(rule_list), **extra}
    return BinaryRules(compile_policy(Policy.model_validate(body)))


def rule(rule_id: str, action: str = "block", **conditions: Any) -> dict[str, Any]:
    return {"id": rule_id, "action": action, **conditions}


def test_a_binary_no_rule_names_needs_nothing() -> None:
    r = rules(rule("q", process={"name": ["qbittorrent"]}), rule("p", process={"path": ["/opt/evil/*"]}))
    assert r.need("true", "/usr/bin/true").nothing
    assert r.need("QBittorrent", "/usr/bin/qbittorrent").now  # names fold case
    assert r.need("renamed", "/usr/bin/qbittorrent").now  # the executable's basename counts too
    assert r.need("tool", "/opt/evil/tool").now


def test_a_sha256_rule_is_ruled_out_only_by_a_known_other_digest() -> None:
    r = rules(rule("h", process={"sha256": [SHA]}))
    assert r.wants_sha256
    assert r.need("x", "/bin/x", sha256=SHA.upper()).now
    assert r.need("x", "/bin/x", sha256="0" * 64).nothing
    assert r.need("x", "/bin/x", sha256=None).now  # unknown: cannot be ruled out


def test_every_condition_on_the_binary_must_hold() -> None:
    r = rules(rule("both", process={"name": ["java"], "path": ["/opt/*"]}))
    assert r.need("java", "/usr/bin/java").nothing
    assert r.need("java", "/opt/jdk/java").now


def test_command_line_rules_leave_their_regexes_to_test_per_process() -> None:
    r = rules(rule("c", process={"cmdline": [r"\bcom\.frostwire\."]}))
    need = r.need("java", "/usr/bin/java")
    assert not need.now and need.cmdline and not need.sockets
    assert need.wants_check("java -cp x com.frostwire.Main")
    assert not need.wants_check("java -jar build.jar")
    named = rules(rule("c", process={"name": ["java"], "cmdline": ["frostwire"]}))
    assert named.need("python3", "/usr/bin/python3").nothing


def test_user_and_parent_conditions_are_checked_at_once() -> None:
    assert rules(rule("u", process={"user": ["guest"]})).need("true", "/bin/true").now
    assert rules(rule("p", process={"parent": ["sshd"], "cmdline": ["x"]})).need("true", "/bin/true").now


def test_network_and_p2p_rules_need_a_socket() -> None:
    net = rules(rule("n", network={"remote_port": 6881}))
    need = net.need("true", "/bin/true")
    assert need.sockets and not need.now
    named = rules(rule("n", process={"name": ["aria2c"]}, network={"local_port": 6881}))
    assert named.need("true", "/bin/true").nothing
    assert named.need("aria2c", "/usr/bin/aria2c").sockets
    p2p = rules(rule("b", network={"p2p": {"min_score": 3, "min_peers": 8}}))
    assert p2p.need("anything", "/bin/anything").sockets


def test_allow_rules_never_ask_for_a_check() -> None:
    assert rules(rule("ok", "allow", process={"user": ["alice"]})).need("true", "/bin/true").nothing


def test_the_unapproved_check_needs_a_look_unless_a_package_vouches() -> None:
    on = rules(unapproved={"action": "report"})
    assert on.wants_package
    assert on.need("tool", "/home/a/tool", package=None).now
    assert on.need("true", "/usr/bin/true", package="coreutils").nothing
    untrusting = rules(unapproved={"action": "block", "trust_package_manager": False})
    assert not untrusting.wants_package
    assert untrusting.need("true", "/usr/bin/true", package="coreutils").now


@pytest.mark.parametrize("path", case_files(), ids=lambda p: p.stem)
def test_no_finding_of_any_case_would_be_skipped(path: Path) -> None:
    case = load_case(path)
    compiled = compile_policy(case.load_policy())
    binary_rules = BinaryRules(compiled)
    for finding in evaluate(case.snapshot.to_snapshot(compiled.p2p_window_scans), compiled):
        proc = finding.process
        need = binary_rules.need(proc.name, proc.exe, sha256=proc.sha256, package=proc.package)
        networked = finding.connection is not None or any(e.attribute == "p2p" for e in finding.evidence)
        if networked:
            assert need.sockets, (finding.rule_id, proc.name)
        else:
            assert need.wants_check(proc.cmdline_str), (finding.rule_id, proc.name)
