"""The demo's policy: policies/default.yaml in ENFORCE mode, made safe for anyone's workstation.

Every block of the baseline becomes a report (so a user's own programs are only reported, never
stopped), and one block rule is added that matches only the demo's stand-in: its unique name AND
the exact path of its private copy of the interpreter. `check_safe` verifies exactly that on the
parsed policy before anything is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from endpoint_agent.policy import parse_policy

DEMO_RULE_ID = "demo-standin"


def derive(baseline: Path, *, name: str, exe: str) -> str:
    """The YAML text of the demo policy."""
    data: dict[str, Any] = yaml.safe_load(baseline.read_text(encoding="utf-8"))
    data["name"] = f"{data.get('name', 'baseline')}-demo"
    data["mode"] = "enforce"
    data["description"] = (
        f"{baseline.name} with every block turned into a report, plus one block rule for the demo's stand-in"
    )
    for rule in data.get("rules") or []:
        if rule.get("action") == "block":
            rule["action"] = "report"
    unapproved = data.get("unapproved")
    if isinstance(unapproved, dict) and unapproved.get("action") == "block":
        unapproved["action"] = "report"
    data.setdefault("rules", []).append(
        {
            "id": DEMO_RULE_ID,
            "description": "The demo's stand-in only: its unique name and its private executable",
            "category": "p2p",
            "action": "block",
            "message": "endpoint-agent demo: the stand-in P2P client was stopped (nothing else is).",
            "process": {"name": [name], "path": [exe]},
        }
    )
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    check_safe(text, name=name, exe=exe)
    return text


def check_safe(text: str, *, name: str, exe: str) -> None:
    """Refuse (ValueError) a policy that could stop anything but the stand-in."""
    policy = parse_policy(text, "demo policy")
    blocking = [r for r in policy.rules if str(r.action) == "block"]
    if [r.id for r in blocking] != [DEMO_RULE_ID]:
        raise ValueError(f"demo policy would block more than its stand-in: {[r.id for r in blocking]}")
    [rule] = blocking
    process = rule.process
    if process is None or rule.network is not None or list(process.name or []) != [name]:
        raise ValueError("demo block rule must match the stand-in's name only")
    if list(process.path or []) != [exe]:
        raise ValueError("demo block rule must match the stand-in's executable only")
    if policy.unapproved is not None and str(policy.unapproved.action) == "block":
        raise ValueError("demo policy would block unapproved processes")


__all__ = ["DEMO_RULE_ID", "check_safe", "derive"]
