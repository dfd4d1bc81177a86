"""One tick of the agent: snapshot -> evaluate -> decide -> enforce -> notify -> record.

The pipeline only: every stage is a part passed in (a `PolicyProvider`, a `SnapshotSource`, the
evaluator, the `Guard`, an `Enforcer`, a `Notifier`, the `ViolationStore`, a `Clock`); the
composition root (endpoint_agent/service/) builds them once and hands them over.

    agent = Agent(policy=provider, source=collector, guard=guard, ...)
    result = agent.tick()      # durable: every violation is committed before tick() returns
    agent.react(take)          # the same pipeline for a partial snapshot (processes that just started)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from endpoint_agent import __version__
from endpoint_agent.clock import Clock
from endpoint_agent.decide import (
    Decider,
    Deduplicator,
    Mode,
    ModeDecision,
    Plan,
    ProtectionCheck,
    SeenEntry,
    SeenKey,
    resolve_mode,
)
from endpoint_agent.enforce.breakglass import BreakGlass, BreakGlassState
from endpoint_agent.enforce.circuit import Admission, CircuitBreaker, StopTarget
from endpoint_agent.enforce.notify import Notifier
from endpoint_agent.enforce.stage import STOPPED, Acted, EnforceStage, notify_stopped
from endpoint_agent.enforce.terminate import BlockAction, Enforcer
from endpoint_agent.errors import StoreError
from endpoint_agent.evaluate import Evaluator, evaluate_plain
from endpoint_agent.logfmt import log_fields
from endpoint_agent.policy import ActivePolicy, PolicyProvider
from endpoint_agent.report.heartbeat import AgentPulse
from endpoint_agent.report.store import NewEvent, ViolationStore
from endpoint_agent.report.violation import build_violation
from endpoint_agent.types import Finding, ProcessInfo, Snapshot, Violation
from endpoint_contract.events import AgentEvent
from endpoint_contract.timestamps import iso_utc

logger = logging.getLogger(__name__)

CIRCUIT_META_KEY = "circuit"
MAX_UNSAVED_EVENTS = 1000  # events kept in memory while the store cannot be written (disk full)


def violation_for(acted: Acted, entry: SeenEntry, policy_version: int, detected_at: datetime) -> Violation:
    """The record of what was done about one finding (one per process instance and outcome)."""
    return build_violation(
        acted.decision.finding,
        acted.outcome,
        event_id=entry.event_id,
        detected_at=detected_at,
        policy_version=policy_version,
        first_seen=entry.first_seen,
        detail=acted.detail or None,
    )


class SnapshotSource(Protocol):
    def snapshot(self) -> Snapshot: ...


# -- the service's tick ----------------------------------------------------------------------


@dataclass(frozen=True)
class TickResult:
    at: datetime
    duration_seconds: float
    policy: ActivePolicy | None
    mode: ModeDecision | None
    processes: int = 0
    findings: int = 0
    violations: tuple[Violation, ...] = ()
    agent_events: tuple[dict[str, object], ...] = ()
    stops: int = 0


class _Live:
    """The process instances the dedup keeps: the last tick's processes, plus those reactions saw since.

    A lookup in the tick's own mapping, not a set of every process's key built per tick.
    """

    __slots__ = ("extra", "processes")

    def __init__(self, processes: Mapping[int, ProcessInfo]) -> None:
        self.processes = processes
        self.extra: set[tuple[int, float]] = set()

    def __contains__(self, key: object) -> bool:
        if key in self.extra:
            return True
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        process = self.processes.get(key[0])
        return process is not None and process.create_time == key[1]


@dataclass
class _Unsaved:
    """What a failed commit could not write; retried with the next tick's commit."""

    events: list[NewEvent] = field(default_factory=list)
    upserts: dict[SeenKey, SeenEntry] = field(default_factory=dict)
    deletes: set[SeenKey] = field(default_factory=set)
    dropped: int = 0  # events dropped while the disk stayed full; counted in the store when it works

    def bound(self, limit: int = MAX_UNSAVED_EVENTS) -> None:
        """A full disk must not make the agent hold every event in memory: the oldest go, counted."""
        over = len(self.events) - limit
        if over > 0:
            del self.events[:over]
            self.dropped += over
            logger.error(
                "store unwritable: dropped the %d oldest unsaved event(s) (%d so far)", over, self.dropped
            )
        if len(self.deletes) > limit:  # stale dedup rows only: forgotten, not wrong
            self.deletes = set(sorted(self.deletes)[-limit:])

    def clear(self) -> None:
        self.events.clear()
        self.upserts.clear()
        self.deletes.clear()
        self.dropped = 0


class Agent:
    def __init__(
        self,
        *,
        policy: PolicyProvider,
        source: SnapshotSource,
        guard: ProtectionCheck,
        enforcer: Enforcer,
        notifier: Notifier,
        store: ViolationStore,
        circuit: CircuitBreaker,
        break_glass: BreakGlass,
        clock: Clock,
        evaluate: Evaluator = evaluate_plain,
        block_action: BlockAction = BlockAction.TERMINATE,
        enforce_allowed: bool = True,
        react_evaluate: Evaluator = evaluate_plain,
        max_unsaved: int = MAX_UNSAVED_EVENTS,
    ) -> None:
        self._policy = policy
        self._source = source
        self._evaluate = evaluate
        # -- event-driven reaction: `react()` runs the same pipeline between ticks --
        self._react_evaluate = react_evaluate  # stateless: a partial snapshot must not feed scan windows
        self._lock = threading.RLock()  # one pipeline run at a time: the scan job or the exec watcher
        self._live: _Live | None = None  # instances the dedup keeps: last tick + reactions
        self.reactions = 0
        self._notifier = notifier
        self._store = store
        self._circuit = circuit
        self._break_glass = break_glass
        self._clock = clock
        self._enforce_allowed = enforce_allowed
        self._dedup = Deduplicator(clock, store.load_seen())
        self._decider = Decider(guard, self._dedup)
        self._stage = EnforceStage(enforcer, circuit, block_action)
        self._unsaved = _Unsaved()
        self._max_unsaved = max_unsaved
        self.started_at = clock.now()
        self.scans = 0
        self.scan_errors = 0
        self.stops_total = 0
        self.violations_total = 0  # report: new violations recorded since start, for the heartbeat
        self.last: TickResult | None = None
        self.last_error: str | None = None
        self.last_break_glass: BreakGlassState | None = None

    def pulse(self) -> AgentPulse:
        """What the heartbeat tells the server about this agent."""
        last = self.last
        return AgentPulse(
            policy_version=last.policy.version if last and last.policy else None,
            mode=last.mode.mode.value if last and last.mode else None,
            mode_reason=last.mode.reason if last and last.mode else None,
            last_scan_at=last.at if last else None,
            circuit_open=self._circuit.state.is_open,
            scans=self.scans,
            scan_errors=self.scan_errors,
            violations=self.violations_total,
            stops=self.stops_total,
        )

    # -- exec gate: a denied exec counts against the same kill-rate budget as a stop --
    def admit_gate_denial(self, policy_version: int, finding: Finding) -> list[dict[str, object]]:
        """Count one exec the gate denied as a stop; the circuit's agent events (open/closed) to record."""
        with self._lock:
            target = StopTarget.of(finding.rule_id, finding.process)
            if self._circuit.admit(policy_version, target) is Admission.ALLOWED:
                self._circuit.record_stop(policy_version, target)
            now = self._clock.now()
            return [self._agent_event(t, now) for t in self._circuit.take_transitions()]

    def gate_circuit_open(self, policy_version: int) -> bool:
        with self._lock:
            return self._circuit.is_open(policy_version)

    # -- the DNS filter (endpoint_agent/dns): its records and its view of connections --
    def record(self, violations: Sequence[Violation], agent_events: Sequence[dict[str, object]] = ()) -> None:
        """Store violations and agent events found outside a tick (the DNS filter's), durably."""
        with self._lock:
            now = self._clock.now()
            events = [self._agent_event(dict(e), now) for e in agent_events]
            self._commit(now, violations, events, live=None)
            self.violations_total += len(violations)

    def close(self, timeout: float = 5.0) -> None:
        """Let queued user notifications go out (bounded); the store belongs to the caller."""
        self._notifier.close(timeout)

    def tick(self) -> TickResult:
        try:
            with self._lock:
                result = self._tick()
        except Exception as exc:
            self.scan_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self.scans += 1
        self.last_error = None
        self.last = result
        return result

    # -- event-driven reaction --
    def react(self, take: Callable[[], Snapshot]) -> TickResult:
        """The tick's pipeline for a partial snapshot (processes that just started), between ticks.

        Same policy, safety rails, dedup and store as `tick()`, never concurrently with it; `take`
        runs under the same lock. Nothing is forgotten (the snapshot does not list every process),
        the store is written only when something changed, and `last`/`scans` stay the ticks'.
        """
        with self._lock:
            result = self._tick(take, self._react_evaluate, partial=True)
            self.reactions += 1
            return result

    def _tick(
        self,
        take: Callable[[], Snapshot] | None = None,
        evaluate: Evaluator | None = None,
        *,
        partial: bool = False,
    ) -> TickResult:
        t0 = time.monotonic()
        now = self._clock.now()
        policy = self._policy.current()
        if policy is None:
            if not partial:
                self._commit(now, [], [], live=None)
            return TickResult(now, time.monotonic() - t0, None, None)
        snapshot = (take or self._source.snapshot)()
        findings = (evaluate or self._evaluate)(snapshot, policy.compiled)
        if partial and not findings:
            # what nearly every exec comes to. Nothing to decide, so no break-glass file,
            # mode, decision or store work: the cost per exec on a busy machine stays small.
            self._add_live(snapshot)
            self._commit(now, [], [], live=self._live, skip_if_idle=True)  # retries what a failure left
            return TickResult(now, time.monotonic() - t0, policy, None, processes=len(snapshot.processes))
        self.last_break_glass = self._break_glass.check()
        mode = resolve_mode(
            policy.mode,
            enforce_allowed=self._enforce_allowed,
            break_glass=self.last_break_glass.active,
            circuit_open=self._circuit.is_open(policy.version),
        )
        # -- policy sync: an unsafe or expired policy only monitors --
        if policy.monitor_reason is not None and mode.mode is Mode.ENFORCE:
            mode = ModeDecision(Mode.MONITOR, policy.monitor_reason)
        decisions = self._decider.decide(findings, mode)
        acted = self._stage.act(decisions, policy.version)
        notify_stopped(self._notifier, acted)

        violations = []
        for a in acted:
            observation = self._dedup.observe(a.decision.finding, a.outcome, policy.version)
            if observation.record:
                violations.append(violation_for(a, observation.entry, policy.version, now))
        agent_events = [self._agent_event(t, now) for t in self._circuit.take_transitions()]  # open/closed
        # -- event-driven reaction: a partial snapshot adds to the live set, never prunes it --
        if partial:
            self._add_live(snapshot)
        else:
            self._live = _Live(snapshot.processes)
        # None: no full tick yet
        self._commit(now, violations, agent_events, live=self._live, skip_if_idle=partial)
        for v in violations:
            logger.info(
                "violation %s: %s pid %d (%s) rule %s",
                v.event_id,
                v.action.value,
                v.pid,
                v.process_name,
                v.rule_id,
                extra=log_fields(rule_id=v.rule_id, pid=v.pid, event_id=v.event_id, action=v.action.value),
            )
        stops = sum(1 for a in acted if a.outcome in STOPPED and a.decision.plan is Plan.STOP)
        self.stops_total += stops
        self.violations_total += len(violations)  # report
        return TickResult(
            at=now,
            duration_seconds=time.monotonic() - t0,
            policy=policy,
            mode=mode,
            processes=len(snapshot.processes),
            findings=len(findings),
            violations=tuple(violations),
            agent_events=tuple(agent_events),
            stops=stops,
        )

    def _add_live(self, snapshot: Snapshot) -> None:
        if self._live is not None:
            self._live.extra.update(p.key for p in snapshot.processes.values())

    def _agent_event(self, body: dict[str, object], now: datetime) -> dict[str, object]:
        event = AgentEvent.model_validate({"event_id": str(uuid.uuid4()), "detected_at": now, **body})
        return event.to_json()

    def _commit(
        self,
        now: datetime,
        violations: Sequence[Violation],
        agent_events: Sequence[dict[str, object]],
        *,
        live: Container[tuple[int, float]] | None,
        skip_if_idle: bool = False,
    ) -> None:
        pending = self._unsaved
        pending.events.extend(NewEvent(v.event_id, "violation", now, v.to_json()) for v in violations)
        pending.events.extend(NewEvent(str(e["event_id"]), "agent", now, e) for e in agent_events)
        pending.bound(self._max_unsaved)
        # A partial snapshot's live set only grows, so nothing departs: with no new event and no
        # dedup entry to write, changes() would hand out nothing (and it costs a pass over the set).
        idle = skip_if_idle and not pending.events and not self._dedup.dirty
        if live is not None and not idle:
            upserts, deletes = self._dedup.changes(live)
            pending.upserts.update((u.key, u) for u in upserts)
            pending.deletes.update(deletes)  # applied after the upserts
        if skip_if_idle and not (pending.events or pending.upserts or pending.deletes):
            return  # most reactions find nothing; no write for them
        try:
            self._store.commit_tick(
                pending.events,
                seen_upserts=list(pending.upserts.values()),
                seen_deletes=sorted(pending.deletes),
                meta={CIRCUIT_META_KEY: self._circuit.state.to_json()},
                dropped=pending.dropped,  # reported as events_dropped by the uploader
            )
        except StoreError:
            logger.error("could not record %d event(s); they stay queued in memory", len(pending.events))
            raise
        pending.clear()

    def status(self) -> dict[str, object]:
        """What `endpoint-agent status` shows (the daemon writes it to status.json after each tick)."""
        last = self.last
        circuit = self._circuit.state
        try:
            queue: dict[str, int] | None = self._store.counts().to_json()
        except StoreError:
            queue = None
        return {
            "agent_version": __version__,
            "started_at": iso_utc(self.started_at),
            "policy": last.policy.to_json() if last and last.policy else None,
            "mode": last.mode.to_json() if last and last.mode else None,
            "break_glass": self.last_break_glass.to_json() if self.last_break_glass else None,
            "circuit": {
                "open": circuit.is_open,
                "policy_version": circuit.policy_version,
                "opened_at": iso_utc(circuit.opened_at) if circuit.opened_at else None,
                "stops_in_window": self._circuit.kills_in_window(),
                "max_kills": self._circuit.max_kills,
                "window_seconds": self._circuit.window_seconds,
            },
            "last_scan": None
            if last is None
            else {
                "at": iso_utc(last.at),
                "duration_ms": round(last.duration_seconds * 1000, 1),
                "processes": last.processes,
                "findings": last.findings,
                "new_violations": len(last.violations),
            },
            "scans": self.scans,
            "scan_errors": self.scan_errors,
            "last_error": self.last_error,
            "stops_total": self.stops_total,
            "reactions": self.reactions,  # fast-path runs on new processes
            "queue": queue,
            "unsaved_events": len(self._unsaved.events),
            "unsaved_dropped": self._unsaved.dropped,
        }


__all__ = ["CIRCUIT_META_KEY", "Agent", "SnapshotSource", "TickResult", "violation_for"]
