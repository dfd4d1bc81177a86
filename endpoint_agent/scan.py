"""The one-shot `scan` and `check-policy` commands: load a policy, snapshot, evaluate, print."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TextIO

from endpoint_agent.display import printable
from endpoint_agent.errors import PolicyLoadError, PolicyValidationError
from endpoint_agent.policy import CompiledPolicy
from endpoint_agent.report.violation import build_violation
from endpoint_agent.sync.local import load_policy
from endpoint_agent.types import Finding, Outcome, RuleAction, Violation

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def check_policy_command(
    path: str, *, public_keys: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    try:
        policy = load_policy(path, public_keys)
    except PolicyValidationError as exc:
        # An admin fixing a policy wants every problem at once, one line each.
        for problem in exc.errors:
            print(f"endpoint-agent: error: {problem}", file=err)
        return EXIT_ERROR
    print(
        f"{path}: valid policy {policy.name!r} version {policy.version}, mode {policy.mode}, "
        f"{len(policy.rules)} rules",
        file=out,
    )
    return EXIT_OK


def findings_to_violations(
    findings: Iterable[Finding], policy_version: int, *, now: datetime | None = None
) -> list[Violation]:
    """Report-only outcome of findings: block rules become `would_block`."""
    detected_at = now or datetime.now(UTC)
    return [
        build_violation(
            f,
            Outcome.WOULD_BLOCK if f.action is RuleAction.BLOCK else Outcome.REPORTED,
            event_id=str(uuid.uuid4()),
            detected_at=detected_at,
            policy_version=policy_version,
        )
        for f in findings
    ]


def scan_once(compiled: CompiledPolicy) -> list[Finding]:
    """One scan of this machine, with the service's collector: behaviour from this scan alone."""
    from endpoint_agent.collect.api import open_collector
    from endpoint_agent.evaluate import evaluate_alone

    return evaluate_alone(open_collector().snapshot(), compiled)


def run_scan_command(
    policy_path: str,
    *,
    as_json: bool = False,
    enforce: bool = False,
    public_keys: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    from endpoint_agent.policy import compile_policy

    policy = load_policy(policy_path, public_keys, report_only=not enforce)
    findings = scan_once(compile_policy(policy))
    if enforce:
        from endpoint_agent.oneshot import enforce_once

        violations = enforce_once(findings, policy_version=policy.version, policy_mode=str(policy.mode))
    else:
        violations = findings_to_violations(findings, policy.version)
    if as_json:
        for v in violations:
            out.write(v.to_json_text() + "\n")
    else:
        print_table(violations, out)
    return EXIT_FINDINGS if violations else EXIT_OK


def print_table(violations: Sequence[Violation], out: TextIO) -> None:
    if not violations:
        print("No findings.", file=out)
        return
    width = shutil.get_terminal_size((120, 20)).columns
    header = f"{'ACTION':<12} {'RULE':<28} {'PID':>7} {'PROCESS':<20} {'USER':<10} REASON"
    print(header, file=out)
    for v in violations:
        line = (  # names and reasons quote what a user chose: printable() (no terminal escapes)
            f"{v.action.value:<12} {printable(v.rule_id)[:28]:<28} {v.pid:>7} "
            f"{printable(v.process_name)[:20]:<20} "
            f"{printable(v.username or '?')[:10]:<10} {printable(v.reason)}"
        )
        print(line if out is not sys.stdout or not out.isatty() else line[:width], file=out)
    print(f"{len(violations)} finding(s).", file=out)


__all__ = [
    "PolicyLoadError",
    "check_policy_command",
    "findings_to_violations",
    "run_scan_command",
    "scan_once",
]
