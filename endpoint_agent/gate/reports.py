"""The gate's reports become violations: recorded, uploaded, told to the user (main agent side).

The gate rate-limits its reports (one per rule, file and user per minute); here each one is
a violation with action `denied` (or `would_block` in monitor mode) in the local store, from
where the uploader sends it; a denial is also a user notification and counts against the
kill-rate circuit breaker (agent.Agent.admit_gate_denial). Reports are queued (bounded) and
written by one thread, so the supervisor that reads them never waits on the store.
"""

from __future__ import annotations

import logging
import posixpath
import queue
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from endpoint_agent.clock import Clock
from endpoint_agent.enforce.notify import Notification, Notifier
from endpoint_agent.errors import StoreError
from endpoint_agent.gate.protocol import LATE, Report
from endpoint_agent.report.store import NewEvent, ViolationStore
from endpoint_agent.report.violation import build_violation
from endpoint_agent.types import Evidence, Finding, Outcome, ProcessInfo, RuleAction, Snapshot, Violation

if TYPE_CHECKING:
    from endpoint_agent.agent import Agent

logger = logging.getLogger(__name__)

MAX_QUEUED = 1024


def _who(report: Report) -> tuple[int | None, str | None]:
    """The user of the exec'ing process: from the report, else read now (the process lives on)."""
    uid, name = report.uid, report.username
    if uid is None:
        from endpoint_agent.gate.table import read_uid

        uid = read_uid(report.pid)
    if uid is not None and name is None:
        import pwd

        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, OSError):
            name = None
    return uid, name


def violation_of(report: Report) -> tuple[Violation, Finding]:
    """The violation to record, and the finding behind it (for the circuit breaker)."""
    exe = report.exe
    uid, username = _who(report)
    proc = ProcessInfo(
        pid=report.pid,
        ppid=0,
        name=posixpath.basename(exe) or exe,
        exe=exe,
        uid=uid,
        username=username,
        sha256=report.sha256,
    )
    evidence = tuple(Evidence(*map(str, e[:3])) for e in report.evidence if len(e) >= 3)
    finding = Finding(
        rule_id=report.rule_id,
        category=report.category,
        action=RuleAction.BLOCK,
        process=proc,
        reason=report.reason,
        evidence=evidence,
        message=report.message,
        help_url=report.help_url,
    )
    outcome = Outcome.DENIED if report.outcome == Outcome.DENIED.value else Outcome.WOULD_BLOCK
    detail = (
        "exec gate: the program was not allowed to start"
        if outcome is Outcome.DENIED
        else "exec gate: would have been denied (monitor mode)"
    )
    violation = build_violation(  # the process's sha256 is the gate's
        finding,
        outcome,
        event_id=str(uuid.uuid4()),
        detected_at=datetime.fromtimestamp(report.at, UTC) if report.at else datetime.now(UTC),
        policy_version=report.policy_version,
        detail=detail,
        source="exec_gate",
    )
    return violation, finding


class GateReports:
    def __init__(
        self,
        agent: Agent,
        store: ViolationStore,
        notifier: Notifier,
        clock: Clock,
        snapshot_of: Callable[[Iterable[int]], Snapshot] | None = None,
    ) -> None:
        self._agent = agent
        self._snapshot_of = snapshot_of  # the service's collector, for programs judged too late
        self._store = store
        self._notifier = notifier
        self._clock = clock
        self._queue: queue.Queue[Report | None] = queue.Queue(MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self.recorded = 0
        self.dropped = 0

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="exec-gate-reports", daemon=True)
            self._thread.start()

    def submit(self, report: Report) -> None:
        """Never blocks: a full queue drops the report and counts it."""
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self.dropped += 1

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
        self._notifier.close(timeout)

    def _run(self) -> None:
        while (report := self._queue.get()) is not None:
            try:
                self.record(report)  # the store, or (late judgements) the agent's pipeline
            except Exception:
                logger.exception("exec gate: could not record a report")

    def stop_late(self, report: Report) -> None:
        """The post-exec path for a program the gate judged too late: the agent's own pipeline (policy,
        guard, circuit breaker, dedup, store) on that one process, with the SHA-256 the gate computed
        (the scan's hash cache may not hash a file that large)."""
        snapshot_of = self._snapshot_of
        if snapshot_of is None:
            return

        def take() -> Snapshot:
            snap: Snapshot = snapshot_of([report.pid])
            proc = snap.processes.get(report.pid)
            if proc is None or proc.exe != report.exe:
                return replace(snap, processes={}, connections=())  # gone, or another program now
            if report.sha256 and not proc.sha256:
                proc = replace(proc, sha256=report.sha256)
            return replace(snap, processes={report.pid: proc})

        self._agent.react(take)

    def record(self, report: Report) -> Violation | None:
        if report.outcome == LATE:
            self.stop_late(report)
            return None
        violation, finding = violation_of(report)
        now = self._clock.now()
        events = [NewEvent(violation.event_id, "violation", now, violation.to_json())]
        if violation.action is Outcome.DENIED:
            for trip in self._agent.admit_gate_denial(report.policy_version, finding):
                events.append(NewEvent(str(trip["event_id"]), "agent", now, trip))
        try:
            self._store.append(events)
        except StoreError as exc:
            logger.error("exec gate: could not record %s: %s", violation.event_id, exc)
        else:
            self.recorded += 1
        logger.warning(
            "violation %s: %s %s (pid %d, user %s) rule %s",
            violation.event_id,
            violation.action.value,
            violation.exe,
            violation.pid,
            violation.username or report.uid,
            violation.rule_id,
        )
        if violation.action is Outcome.DENIED:
            self._notifier.notify(
                Notification(
                    username=violation.username,
                    uid=report.uid,
                    pid=report.pid,
                    process_name=violation.process_name,
                    rule_id=report.rule_id,
                    outcome=Outcome.DENIED,
                    message=report.message,
                    help_url=report.help_url,
                )
            )
        return violation


__all__ = ["GateReports", "violation_of"]
