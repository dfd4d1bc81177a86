"""The one-shot `scan` and `check-policy` commands: load a policy, snapshot, evaluate, print."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from endpoint_agent.display import printable
from endpoint_agent.errors import AgentError, PolicyLoadError, PolicySignatureError, PolicyValidationError
from endpoint_agent.policy import Policy, load_policy_file
from endpoint_agent.policy.load import DecodeEnvelope
from endpoint_agent.report.violation import build_violation
from endpoint_agent.types import Finding, Outcome, RuleAction, Violation

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _trusted_key_paths(public_keys: Sequence[str] | None) -> Sequence[str]:
    """--public-key flags, else the agent's configured keys (ENDPOINT_AGENT_PUBLIC_KEY, config file)."""
    if public_keys:
        return public_keys
    from endpoint_agent.settings import load_settings

    try:
        return [str(p) for p in load_settings({}).public_keys]
    except AgentError:
        return []  # unrelated bad settings must not break a one-shot scan; keys are then simply absent


def _envelope_decoder(public_keys: Sequence[str] | None, *, report_only: bool, err: TextIO) -> DecodeEnvelope:
    """A signed envelope is verified against the trusted keys before its payload is read.

    Without any trusted key, a report-only command may still read it (with a warning); nothing is
    ever signalled on the strength of an unverified envelope.
    """

    def decode(raw: bytes) -> Policy:
        # Imported here, for envelopes only: cryptography costs the service ~8 MB of RSS (issue 7).
        from endpoint_contract.envelope import load_public_key, read_unverified, verify_envelope

        keys = [load_public_key(Path(p)) for p in _trusted_key_paths(public_keys)]
        if keys:
            return verify_envelope(raw, keys, Policy).policy
        if not report_only:
            raise PolicySignatureError(
                "refusing to enforce a signed envelope whose signature cannot be checked; "
                "pass --public-key FILE"
            )
        print(
            "endpoint-agent: warning: signature NOT verified (no --public-key given); report only",
            file=err,
        )
        return read_unverified(raw, Policy).policy

    return decode


def load_policy(
    path: str,
    public_keys: Sequence[str] | None = None,
    *,
    report_only: bool = True,
    err: TextIO = sys.stderr,
) -> Policy:
    """A policy file (YAML) or a signed envelope, verified when trusted keys are known."""
    decoder = _envelope_decoder(public_keys, report_only=report_only, err=err)
    return load_policy_file(Path(path), decode_envelope=decoder)


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


def run_scan_command(
    policy_path: str,
    *,
    as_json: bool = False,
    enforce: bool = False,
    public_keys: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    from endpoint_agent.collect.machine import scan_once
    from endpoint_agent.policy import compile_policy

    policy = load_policy(policy_path, public_keys, report_only=not enforce)
    findings = scan_once(compile_policy(policy))
    if enforce:
        from endpoint_agent.agent import enforce_once

        violations = enforce_once(findings, policy)
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


__all__ = ["PolicyLoadError", "check_policy_command", "findings_to_violations", "run_scan_command"]
