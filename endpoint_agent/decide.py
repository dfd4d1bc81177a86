"""Decide: what to do about each finding, before anything is done.

- The effective mode (`resolve_mode`): enforce only when the policy says so and enforcement is
  allowed here, and never while the break-glass file exists or the circuit breaker is open.
- Per finding a `Plan`: report it, record it as would-block (monitor mode), refuse because the
  process is protected (in any mode, so monitor mode predicts enforcement truthfully), stop it,
  or nothing because this very process instance was already stopped.
- Dedup (`Deduplicator`): ONE violation per (rule, pid, create_time) -- a client running all day
  is one record with first_seen/last_seen; a new process instance is a new violation. A second
  record for the same instance is written only when what the agent did changes (e.g. a process
  first recorded as would_block in monitor mode is later killed when enforcement resumes).
"""

from __future__ import annotations

import uuid
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from endpoint_agent.clock import Clock
from endpoint_agent.types import Enforce, Finding, Outcome, ProcessInfo, RuleAction
from endpoint_contract.vocabulary import Mode

_STOPPED = frozenset({Outcome.KILLED, Outcome.SUSPENDED})

SeenKey = tuple[str, int, float]  # (rule_id, pid, create_time): one process instance under one rule


@dataclass(frozen=True)
class SeenEntry:
    """One live (rule, process instance) pair and the violation it produced."""

    rule_id: str
    pid: int
    create_time: float
    event_id: str
    outcome: Outcome
    policy_version: int
    first_seen: datetime
    last_seen: datetime

    @property
    def key(self) -> SeenKey:
        return (self.rule_id, self.pid, self.create_time)


@dataclass(frozen=True)
class ModeDecision:
    mode: Mode
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"mode": self.mode.value, "reason": self.reason}


def resolve_mode(
    policy_mode: str,
    *,
    enforce_allowed: bool = True,
    break_glass: bool = False,
    circuit_open: bool = False,
) -> ModeDecision:
    """Safety rails first: no policy can switch them off."""
    if break_glass:
        return ModeDecision(Mode.MONITOR, "break-glass file present")
    if circuit_open:
        return ModeDecision(Mode.MONITOR, "circuit breaker open: too many distinct programs stopped")
    if not enforce_allowed:
        return ModeDecision(Mode.MONITOR, "enforcement not enabled")
    if str(policy_mode) != Mode.ENFORCE.value:
        return ModeDecision(Mode.MONITOR, "policy mode is monitor")
    return ModeDecision(Mode.ENFORCE, "policy mode is enforce")


class Plan(StrEnum):
    REPORT = "report"
    WOULD_BLOCK = "would_block"
    PROTECTED = "protected"
    STOP = "stop"
    ALREADY_STOPPED = "already_stopped"
    # `enforce: connection` rules: the DNS filter and the nftables table refuse the connections;
    # the process is never signalled.
    CONNECTION_BLOCKED = "connection_blocked"


class ProtectionCheck(Protocol):
    def check(self, proc: ProcessInfo) -> object | None:
        """A reason (printable) when the process must never be signalled, else None."""
        ...


@dataclass(frozen=True)
class Decision:
    finding: Finding
    plan: Plan
    previous: SeenEntry | None = None
    protection: str | None = None


def finding_key(finding: Finding) -> SeenKey:
    return (finding.rule_id, finding.process.pid, finding.process.create_time)


@dataclass(frozen=True)
class Observation:
    entry: SeenEntry
    record: bool  # True: write a violation for it (new instance, or a changed outcome)


class Deduplicator:
    """Remembers each live (rule, process instance) and the violation it produced.

    `changes()` hands the persistence layer what changed since the last call; `last_seen` of an
    unchanged entry is written back at most every `flush_seconds` (it is kept exact in memory).
    """

    def __init__(
        self, clock: Clock, entries: Iterable[SeenEntry] = (), *, flush_seconds: float = 60.0
    ) -> None:
        self._clock = clock
        self._entries: dict[SeenKey, SeenEntry] = {e.key: e for e in entries}
        self._persisted: dict[SeenKey, datetime] = {k: e.last_seen for k, e in self._entries.items()}
        self._dirty: set[SeenKey] = set()
        self._flush = timedelta(seconds=flush_seconds)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: SeenKey) -> SeenEntry | None:
        return self._entries.get(key)

    @property
    def dirty(self) -> bool:
        """Whether some entry waits to be written by `changes()` (departures aside)."""
        return bool(self._dirty)

    def observe(self, finding: Finding, outcome: Outcome, policy_version: int) -> Observation:
        key = finding_key(finding)
        now = self._clock.now()
        previous = self._entries.get(key)
        if previous is None:
            entry = SeenEntry(*key, str(uuid.uuid4()), outcome, policy_version, now, now)
            record = True
        elif previous.outcome != outcome:
            entry = replace(
                previous,
                event_id=str(uuid.uuid4()),
                outcome=outcome,
                policy_version=policy_version,
                last_seen=now,
            )
            record = True
        else:
            entry = replace(previous, last_seen=now)
            record = False
        self._entries[key] = entry
        persisted = self._persisted.get(key)
        if record or persisted is None or now - persisted >= self._flush:
            self._dirty.add(key)
        return Observation(entry, record)

    def changes(self, live: Container[tuple[int, float]]) -> tuple[list[SeenEntry], list[SeenKey]]:
        """(entries to upsert, keys to delete), applied in that order; gone processes are forgotten.

        `live`: the (pid, create_time) of every running process; only asked about this dedup's own
        entries, so a cheap membership test (no copy of every process) is all it needs.
        """
        gone = [k for k in self._entries if (k[1], k[2]) not in live]
        # A departing entry's exact last_seen is written once more (it ends up on its event).
        self._dirty.update(k for k in gone if self._persisted.get(k) != self._entries[k].last_seen)
        upserts = [self._entries[k] for k in sorted(self._dirty)]
        for entry in upserts:
            self._persisted[entry.key] = entry.last_seen
        self._dirty.clear()
        for key in gone:
            del self._entries[key]
            del self._persisted[key]
        return upserts, gone


class Decider:
    def __init__(self, guard: ProtectionCheck, dedup: Deduplicator) -> None:
        self._guard = guard
        self._dedup = dedup

    def decide(self, findings: Sequence[Finding], mode: ModeDecision) -> list[Decision]:
        out: list[Decision] = []
        seen: set[SeenKey] = set()
        for finding in findings:
            key = finding_key(finding)
            if key in seen or finding.action is RuleAction.ALLOW:
                continue  # the engine yields one finding per (process, rule); be robust anyway
            seen.add(key)
            out.append(self._plan(finding, key, mode))
        return out

    def _plan(self, finding: Finding, key: SeenKey, mode: ModeDecision) -> Decision:
        previous = self._dedup.get(key)
        if finding.action is RuleAction.REPORT:
            return Decision(finding, Plan.REPORT, previous)
        if finding.enforce is Enforce.CONNECTION:
            plan = Plan.WOULD_BLOCK if mode.mode is Mode.MONITOR else Plan.CONNECTION_BLOCKED
            return Decision(finding, plan, previous)
        if previous is not None and previous.outcome in _STOPPED:
            return Decision(finding, Plan.ALREADY_STOPPED, previous)
        protection = self._guard.check(finding.process)
        if protection is not None:
            return Decision(finding, Plan.PROTECTED, previous, str(protection))
        if mode.mode is Mode.MONITOR:
            return Decision(finding, Plan.WOULD_BLOCK, previous)
        return Decision(finding, Plan.STOP, previous)


__all__ = [
    "Decider",
    "Decision",
    "Deduplicator",
    "Mode",
    "ModeDecision",
    "Observation",
    "Plan",
    "ProtectionCheck",
    "SeenEntry",
    "SeenKey",
    "finding_key",
    "resolve_mode",
]
