"""Violations as the agent builds them (report.violation.build_violation), for tests of what follows;
`violation`/`record` put one in a local store as a scan would (the listing and display tests)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from endpoint_agent.decide import SeenEntry
from endpoint_agent.report.store import NewEvent, ViolationStore
from endpoint_agent.report.violation import HostFacts, build_violation
from endpoint_agent.types import (
    Connection,
    Evidence,
    Finding,
    Outcome,
    ProcessInfo,
    RuleAction,
    Severity,
    Violation,
)

HOST = HostFacts(hostname="ws-test", os="Debian GNU/Linux 13 (trixie)")
SHA = "ab" * 32


def sample_violation(
    rule: str,
    detected_at: datetime,
    *,
    pid: int = 4242,
    outcome: Outcome = Outcome.KILLED,
    reason: str = "process name 'qbittorrent' matched 'qbittorrent*'",
    connection: Connection | None = None,
    first_seen: datetime | None = None,
    policy_version: int = 3,
) -> Violation:
    proc = ProcessInfo(
        pid=pid,
        ppid=1000,
        name="qbittorrent",
        exe="/opt/qbittorrent/qbittorrent",
        cmdline=("/opt/qbittorrent/qbittorrent", "--profile=work"),
        username="alice",
        uid=1000,
        create_time=1.5,
        sha256=SHA,
        parent_name="bash",
    )
    finding = Finding(
        rule_id=rule,
        category="p2p",
        action=RuleAction.BLOCK,
        process=proc,
        reason=reason,
        evidence=(Evidence("name", "qbittorrent*", "qbittorrent"),),
        connection=connection,
        severity=Severity.HIGH,
    )
    return build_violation(
        finding,
        outcome,
        event_id=str(uuid.uuid4()),
        detected_at=detected_at,
        policy_version=policy_version,
        first_seen=first_seen or detected_at,
        host=HOST,
    )


LISTING_T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def violation(rule: str, *, connection: Connection | None = None) -> Violation:
    return sample_violation(rule, LISTING_T0, connection=connection)


def record(store: ViolationStore, v: Violation) -> None:
    seen = SeenEntry(v.rule_id, v.pid, 1.5, v.event_id, v.action, 3, LISTING_T0, LISTING_T0.replace(minute=5))
    store.commit_tick([NewEvent(v.event_id, "violation", LISTING_T0, v.to_json())], seen_upserts=[seen])
