"""The public surface of endpoint_agent.policy is deliberate (what the CLI and server import)."""

from __future__ import annotations

import endpoint_agent.policy as policy

EXPECTED = {
    "ActivePolicy",
    "PolicyProvider",
    "MAX_POLICY_BYTES",
    "UNAPPROVED_RULE_ID",
    "CompiledPolicy",
    "CompiledRule",
    "DecodeEnvelope",
    "Defaults",
    "Mode",
    "NetworkConditions",
    "Policy",
    "PortRange",
    "ProcessConditions",
    "Protocol",
    "Rule",
    "Specificity",
    "Unapproved",
    "UnapprovedAction",
    "compile_policy",
    "evaluate",
    "in_unapproved_scope",
    "is_envelope",
    "load_policy_file",
    "parse_policy",
}


def test_exported_members() -> None:
    assert set(policy.__all__) == EXPECTED
    for name in policy.__all__:
        assert getattr(policy, name) is not None, name


def test_unapproved_rule_id_is_the_contract_value() -> None:
    assert policy.UNAPPROVED_RULE_ID == "unapproved-app"
    assert policy.MAX_POLICY_BYTES == 4 * 1024 * 1024
