"""Runs every tests/cases/*.yaml: the engine must produce exactly the expected findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpoint_agent.policy import compile_policy, evaluate
from endpoint_agent.types import Finding
from tests.support.casefile import Expected, case_files, load_case


def _where(finding: Finding) -> str | None:
    conn = finding.connection
    if conn is None:
        return None
    return str(conn.laddr) if conn.laddr is not None else str(conn.raddr)


def _check_details(expected: Expected, finding: Finding) -> list[str]:
    problems = []
    for text in expected.reason_contains:
        if text not in finding.reason:
            problems.append(f"reason {finding.reason!r} lacks {text!r}")
    if expected.connection is not None and _where(finding) != expected.connection:
        problems.append(f"connection {_where(finding)!r} != {expected.connection!r}")
    for attr in ("category", "message", "help_url"):
        want = getattr(expected, attr)
        if want is not None and getattr(finding, attr) != want:
            problems.append(f"{attr} {getattr(finding, attr)!r} != {want!r}")
    return problems


def test_there_are_enough_cases() -> None:
    assert len(case_files()) >= 25


@pytest.mark.parametrize("path", case_files(), ids=lambda p: p.stem)
def test_case(path: Path) -> None:
    case = load_case(path)
    compiled = compile_policy(case.load_policy())
    findings = evaluate(case.snapshot.to_snapshot(compiled.p2p_window_scans), compiled)

    got = sorted((f.rule_id, f.process.pid, f.action.value) for f in findings)
    want = sorted((e.rule_id, e.pid, e.action.value) for e in case.expected)
    assert got == want, f"{case.description}\nreasons: {[f.reason for f in findings]}"

    by_key = {(f.rule_id, f.process.pid): f for f in findings}
    problems = [p for e in case.expected for p in _check_details(e, by_key[(e.rule_id, e.pid)])]
    assert not problems, problems
    for finding in findings:  # every finding explains itself
        assert finding.evidence and finding.reason and f"rule {finding.rule_id}" in finding.reason
