"""The policy language and the pure policy engine.

    policy = load_policy_file("policies/default.yaml")   # or parse_policy(text, source)
    compiled = compile_policy(policy)                    # once per policy
    findings = evaluate(snapshot, compiled)              # pure: no I/O, no clock

The language is documented in policies/README.md; its JSON Schema is policies/schema.json
(`python -m endpoint_agent.policy.schema`).
"""

from endpoint_agent.policy.active import ActivePolicy, PolicyProvider
from endpoint_agent.policy.compile import CompiledPolicy, CompiledRule, compile_policy
from endpoint_agent.policy.engine import evaluate
from endpoint_agent.policy.fields import PortRange
from endpoint_agent.policy.load import (
    MAX_POLICY_BYTES,
    DecodeEnvelope,
    is_envelope,
    load_policy_file,
    parse_policy,
)
from endpoint_agent.policy.model import (
    UNAPPROVED_RULE_ID,
    Defaults,
    Mode,
    NetworkConditions,
    Policy,
    ProcessConditions,
    Protocol,
    Rule,
    Specificity,
    Unapproved,
    UnapprovedAction,
)
from endpoint_agent.policy.unapproved import in_unapproved_scope

__all__ = [
    "MAX_POLICY_BYTES",
    "UNAPPROVED_RULE_ID",
    "ActivePolicy",
    "CompiledPolicy",
    "CompiledRule",
    "DecodeEnvelope",
    "Defaults",
    "Mode",
    "NetworkConditions",
    "Policy",
    "PolicyProvider",
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
]
