"""One tick of the agent: snapshot -> evaluate -> decide -> enforce -> notify -> record.

Composition only: every stage is a part passed in (a `PolicyProvider`, a `SnapshotSource`, the
pure evaluator, the `Guard`, an `Enforcer`, a `Notifier`, the `ViolationStore`, a `Clock`), so
policy sync, an event-driven process source or an uploader plug in without touching the loop.

    agent = build_agent(settings, store=store, policy=FilePolicyProvider(path))
    result = agent.tick()      # durable: every violation is committed before tick() returns

`enforce_findings()` is the same decide -> enforce -> notify path for the one-shot
`scan --enforce` (no store, no dedup across runs), and `enforce_once()` wires it from settings.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from endpoint_agent import __version__
from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.decide import (
    Decider,
    Decision,
    Deduplicator,
    Mode,
    ModeDecision,
    Plan,
    ProtectionCheck,
    resolve_mode,
)
from endpoint_agent.enforce.breakglass import BreakGlass, BreakGlassState
from endpoint_agent.enforce.circuit import Admission, CircuitBreaker, CircuitState, StopTarget
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.enforce.notify import DesktopNotifier, LogOnlyNotifier, Notification, Notifier
from endpoint_agent.enforce.scope import make_guard
from endpoint_agent.enforce.terminate import BlockAction, Enforcer, EnforceResult, PsutilEnforcer
from endpoint_agent.errors import PolicyError, StoreError
from endpoint_agent.logfmt import log_fields
from endpoint_agent.report.store import NewEvent, SeenEntry, SeenKey, ViolationStore
from endpoint_agent.report.violation import build_violation
from endpoint_agent.settings import AgentSettings, load_settings
from endpoint_agent.types import Finding, Outcome, Snapshot, Violation
from endpoint_contract.events import AgentEvent
from endpoint_contract.timestamps import iso_utc

logger = logging.getLogger(__name__)

_PLAN_OUTCOME = {
    Plan.REPORT: Outcome.REPORTED,
    Plan.WOULD_BLOCK: Outcome.WOULD_BLOCK,
    Plan.PROTECTED: Outcome.PROTECTED,
    Plan.CONNECTION_BLOCKED: Outcome.CONNECTION_BLOCKED,
}
_STOPPED = frozenset({Outcome.KILLED, Outcome.SUSPENDED})
CIRCUIT_META_KEY = "circuit"
MAX_UNSAVED_EVENTS = 1000  # events kept in memory while the store cannot be written (disk full)


# -- the seams -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivePolicy:
    """A validated, compiled policy the agent is running, and where it came from."""

    compiled: Any  # endpoint_agent.policy.CompiledPolicy
    name: str
    version: int
    mode: str
    source: str
    # Policy sync (issue 4): why this policy may only monitor whatever its own mode says
    # (unsafe on activation, or expired); None when it may enforce.
    monitor_reason: str | None = None

    @classmethod
    def from_policy(cls, policy: Any, source: str) -> ActivePolicy:
        from endpoint_agent.policy import compile_policy

        return cls(compile_policy(policy), policy.name, int(policy.version), str(policy.mode), source)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "mode": self.mode,
            "source": self.source,
        }
        if self.monitor_reason is not None:
            out["monitor_reason"] = self.monitor_reason
        return out


class PolicyProvider(Protocol):
    """Where the active policy comes from: a local file today, the sync module tomorrow."""

    def current(self) -> ActivePolicy | None:
        """The policy to scan with now, or None when there is none yet (nothing is evaluated)."""
        ...


class SnapshotSource(Protocol):
    def snapshot(self) -> Snapshot: ...


Evaluator = Callable[[Snapshot, Any], list[Finding]]
PolicyLoader = Callable[[Path], Any]


class FilePolicyProvider:
    """Standalone mode: a local policy file, reloaded when it changes; a bad edit keeps the last good one."""

    def __init__(self, path: Path, *, load: PolicyLoader | None = None) -> None:
        self._path = path
        self._load = load or _load_policy_file
        self._stamp = self._file_stamp()
        self._active = ActivePolicy.from_policy(self._load(path), str(path))  # errors here stop the start

    def current(self) -> ActivePolicy:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                policy = ActivePolicy.from_policy(self._load(self._path), str(self._path))
            except PolicyError as exc:
                logger.error(
                    "policy file changed but is not usable; keeping version %d: %s", self._active.version, exc
                )
            else:
                logger.info("policy reloaded: %s version %d (%s)", policy.name, policy.version, policy.mode)
                self._active = policy
        return self._active

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)


def _load_policy_file(path: Path) -> Any:
    from endpoint_agent.policy import load_policy_file

    return load_policy_file(path)


def _evaluate(snapshot: Snapshot, compiled: Any) -> list[Finding]:
    from endpoint_agent.policy import evaluate

    return list(evaluate(snapshot, compiled))


# -- the enforce stage (shared by the service and `scan --enforce`) ----------------------------


@dataclass(frozen=True)
class Acted:
    decision: Decision
    outcome: Outcome
    detail: str = ""


@dataclass
class EnforceStage:
    enforcer: Enforcer
    circuit: CircuitBreaker
    block_action: BlockAction = BlockAction.TERMINATE

    def act(self, decisions: Sequence[Decision], policy_version: int) -> list[Acted]:
        return [self._act(d, policy_version) for d in decisions]

    def _act(self, d: Decision, policy_version: int) -> Acted:
        if d.plan in _PLAN_OUTCOME:
            return Acted(d, _PLAN_OUTCOME[d.plan], f"protected: {d.protection}" if d.protection else "")
        if d.plan is Plan.ALREADY_STOPPED:
            assert d.previous is not None
            return Acted(d, d.previous.outcome, "already stopped")
        proc = d.finding.process
        target = StopTarget.of(d.finding.rule_id, proc)  # breadth, not count (enforce/circuit.py)
        if self.circuit.admit(policy_version, target) is not Admission.ALLOWED:
            return Acted(d, Outcome.WOULD_BLOCK, "circuit breaker open: monitor mode")
        try:
            if self.block_action is BlockAction.SUSPEND:
                result = self.enforcer.suspend(proc)
            else:
                result = self.enforcer.terminate(proc)
        except Exception as exc:  # an enforcer bug must not lose the scan's records
            logger.exception("stopping pid %d failed unexpectedly", proc.pid)
            result = EnforceResult(Outcome.KILL_FAILED, f"internal error: {type(exc).__name__}")
        if result.outcome in _STOPPED:
            self.circuit.record_stop(policy_version, target)
        log = logger.warning if result.outcome in _STOPPED else logger.error
        if result.outcome is Outcome.PROTECTED:
            log = logger.info
        log(
            "%s pid %d (%s) for rule %s: %s",
            result.outcome.value,
            proc.pid,
            proc.name,
            d.finding.rule_id,
            result.detail,
            extra=log_fields(rule_id=d.finding.rule_id, pid=proc.pid, action=result.outcome.value),
        )
        return Acted(d, result.outcome, result.detail)


def violation_for(acted: Acted, entry: SeenEntry, policy_version: int, detected_at: datetime) -> Violation:
    return build_violation(
        acted.decision.finding,
        acted.outcome,
        event_id=entry.event_id,
        detected_at=detected_at,
        policy_version=policy_version,
        first_seen=entry.first_seen,
        detail=acted.detail or None,
    )


def _notify_stopped(notifier: Notifier, acted: Sequence[Acted]) -> None:
    for a in acted:
        if a.outcome not in _STOPPED or a.decision.plan is Plan.ALREADY_STOPPED:
            continue
        f = a.decision.finding
        notifier.notify(
            Notification(
                username=f.process.username,
                uid=f.process.uid,
                pid=f.process.pid,
                process_name=f.process.name,
                rule_id=f.rule_id,
                outcome=a.outcome,
                message=f.message,
                help_url=f.help_url,
            )
        )


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
        evaluate: Evaluator = _evaluate,
        block_action: BlockAction = BlockAction.TERMINATE,
        enforce_allowed: bool = True,
        react_evaluate: Evaluator = _evaluate,
        max_unsaved: int = MAX_UNSAVED_EVENTS,
    ) -> None:
        self._policy = policy
        self._source = source
        self._evaluate = evaluate
        # -- event-driven reaction (issue 7): `react()` runs the same pipeline between ticks --
        self._react_evaluate = react_evaluate  # stateless: a partial snapshot must not feed scan windows
        self._lock = threading.RLock()  # one pipeline run at a time: the scan job or the exec watcher
        self._live: set[tuple[int, float]] | None = None  # instances the dedup keeps: last tick + reactions
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
        self.violations_total = 0  # report (issue 5): new violations recorded since start, for the heartbeat
        self.last: TickResult | None = None
        self.last_error: str | None = None
        self.last_break_glass: BreakGlassState | None = None

    @property
    def store(self) -> ViolationStore:
        return self._store

    @property
    def source(self) -> SnapshotSource:
        return self._source

    # -- policy sync (issue 4): the daemon reaches the sync's job and status through it --
    @property
    def policy_provider(self) -> PolicyProvider:
        return self._policy

    # -- report (issue 5): the heartbeat's circuit state --
    @property
    def circuit_open(self) -> bool:
        return self._circuit.state.is_open

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

    def use_source(self, source: SnapshotSource) -> None:
        """Replace the snapshot source (e.g. with one that annotates connections with domains)."""
        with self._lock:
            self._source = source

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

    # -- event-driven reaction (issue 7) --
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
            # issue 7: what nearly every exec comes to. Nothing to decide, so no break-glass file,
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
        # -- policy sync (issue 4): an unsafe or expired policy only monitors --
        if policy.monitor_reason is not None and mode.mode is Mode.ENFORCE:
            mode = ModeDecision(Mode.MONITOR, policy.monitor_reason)
        decisions = self._decider.decide(findings, mode)
        acted = self._stage.act(decisions, policy.version)
        _notify_stopped(self._notifier, acted)

        violations = []
        for a in acted:
            observation = self._dedup.observe(a.decision.finding, a.outcome, policy.version)
            if observation.record:
                violations.append(violation_for(a, observation.entry, policy.version, now))
        agent_events = [self._agent_event(t, now) for t in self._circuit.take_transitions()]  # open/closed
        # -- event-driven reaction (issue 7): a partial snapshot adds to the live set, never prunes it --
        if partial:
            self._add_live(snapshot)
        else:
            self._live = {p.key for p in snapshot.processes.values()}
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
        stops = sum(1 for a in acted if a.outcome in _STOPPED and a.decision.plan is Plan.STOP)
        self.stops_total += stops
        self.violations_total += len(violations)  # report (issue 5)
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
            self._live.update(p.key for p in snapshot.processes.values())

    def _agent_event(self, body: dict[str, object], now: datetime) -> dict[str, object]:
        event = AgentEvent.model_validate({"event_id": str(uuid.uuid4()), "detected_at": now, **body})
        return event.to_json()

    def _commit(
        self,
        now: datetime,
        violations: Sequence[Violation],
        agent_events: Sequence[dict[str, object]],
        *,
        live: Collection[tuple[int, float]] | None,
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
            return  # issue 7: most reactions find nothing; no write for them
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
            "reactions": self.reactions,  # issue 7: fast-path runs on new processes
            "hashing": _hash_status(self._source),
            "queue": queue,
            "unsaved_events": len(self._unsaved.events),
            "unsaved_dropped": self._unsaved.dropped,
        }


def build_agent(
    settings: AgentSettings,
    *,
    store: ViolationStore,
    policy: PolicyProvider,
    source: SnapshotSource | None = None,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    enforcer: Enforcer | None = None,
) -> Agent:
    """The production wiring; tests pass doubles for the parts that cannot run here."""
    clock = clock or SystemClock()
    guard = make_guard(settings)  # issue 7: narrowed to a test scope when settings ask for one
    if source is None:
        # Every network namespace, package ownership for the unapproved check; issue 7: read
        # incrementally where Linux /proc allows it (the same snapshot, a fraction of the cost).
        from endpoint_agent.collect.incremental import IncrementalCollector, linux_procfs_available
        from endpoint_agent.collect.machine import machine_collector

        source = (
            IncrementalCollector(clock=clock, want_hashes=lambda: _wants_sha256(policy))
            if linux_procfs_available()
            else machine_collector()
        )
    state = CircuitState.from_json(store.get_meta(CIRCUIT_META_KEY))
    from endpoint_agent.collect.machine import BehaviourEvaluator
    from endpoint_agent.findings_memo import FindingsMemo

    return Agent(
        policy=policy,
        source=source,
        # The policy engine plus the P2P behaviour window; an unchanged quiet process is not re-evaluated.
        evaluate=BehaviourEvaluator(evaluate=FindingsMemo()),
        react_evaluate=_evaluate_alone,  # issue 7: a new process's behaviour from its own snapshot only
        guard=guard,
        enforcer=enforcer or make_enforcer(settings, guard),
        notifier=notifier or make_notifier(settings, clock),
        store=store,
        circuit=make_circuit(settings, clock, state),
        break_glass=BreakGlass(settings.break_glass_file),
        clock=clock,
        block_action=BlockAction(settings.block_action),
        max_unsaved=settings.store_max_unsaved_events,
    )


def _hash_status(source: SnapshotSource) -> dict[str, object] | None:
    status = getattr(source, "hash_status", None)
    return status() if callable(status) else None


def _wants_sha256(policy: PolicyProvider) -> bool:
    """Hash executables only while the active policy has a sha256 condition (collect/hashing.py)."""
    active = policy.current()
    return active is not None and bool(getattr(active.compiled, "uses_sha256", True))


def make_enforcer(settings: AgentSettings, guard: Guard) -> Enforcer:
    return PsutilEnforcer(guard, grace_seconds=settings.kill_grace_seconds, tree=settings.kill_tree)


def make_circuit(settings: AgentSettings, clock: Clock, state: CircuitState | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        clock=clock,
        max_kills=settings.circuit_max_kills,
        window_seconds=settings.circuit_window_seconds,
        state=state,
    )


def _evaluate_alone(snapshot: Snapshot, compiled: Any) -> list[Finding]:
    """issue 7: evaluate a partial snapshot with P2P behaviour from it alone (a fresh, throwaway window)."""
    from endpoint_agent.collect.machine import BehaviourEvaluator

    return BehaviourEvaluator()(snapshot, compiled)


def make_notifier(settings: AgentSettings, clock: Clock) -> Notifier:
    if not settings.notify:
        return LogOnlyNotifier()
    return DesktopNotifier(
        clock=clock, timeout=settings.notify_timeout_seconds, min_interval=settings.notify_interval_seconds
    )


# -- one-shot enforcement for `scan --enforce` ------------------------------------------------


def enforce_findings(
    findings: Sequence[Finding],
    policy_version: int,
    *,
    enforcer: Enforcer,
    guard: ProtectionCheck,
    notifier: Notifier,
    mode: ModeDecision | None = None,
    circuit: CircuitBreaker | None = None,
    clock: Clock | None = None,
    block_action: BlockAction = BlockAction.TERMINATE,
) -> list[Violation]:
    """Decide, enforce and notify once; one violation per finding with what was done."""
    clock = clock or SystemClock()
    mode = mode or ModeDecision(Mode.ENFORCE, "enforcement requested")
    circuit = circuit or CircuitBreaker(clock=clock)
    dedup = Deduplicator(clock)
    decisions = Decider(guard, dedup).decide(findings, mode)
    stage = EnforceStage(enforcer, circuit, block_action)
    acted = stage.act(decisions, policy_version)
    _notify_stopped(notifier, acted)
    now = clock.now()
    out = []
    for a in acted:
        entry = dedup.observe(a.decision.finding, a.outcome, policy_version).entry
        out.append(violation_for(a, entry, policy_version, now))
    return out


def enforce_once(
    findings: Sequence[Finding],
    policy: Any,
    *,
    settings: AgentSettings | None = None,
    honor_policy_mode: bool = False,
) -> list[Violation]:
    """`scan --enforce`: stop what block rules match, with every safety rail of the service.

    The guard, the break-glass file and a circuit breaker (fresh for this run) apply; the
    policy's own `mode` is consulted only with `honor_policy_mode` (the flag is the operator's
    explicit request to enforce).
    """
    settings = settings or load_settings({})
    clock = SystemClock()
    guard = make_guard(settings)  # the same guard as the service, test scope included
    break_glass = BreakGlass(settings.break_glass_file).check()
    mode = resolve_mode(
        str(policy.mode) if honor_policy_mode else Mode.ENFORCE.value, break_glass=break_glass.active
    )
    notifier = make_notifier(settings, clock)
    try:
        return enforce_findings(
            findings,
            int(policy.version),
            enforcer=make_enforcer(settings, guard),
            guard=guard,
            notifier=notifier,
            mode=mode,
            circuit=make_circuit(settings, clock),  # fresh for this one-shot run
            clock=clock,
            block_action=BlockAction(settings.block_action),
        )
    finally:
        notifier.close(settings.notify_timeout_seconds)


__all__ = [
    "Acted",
    "ActivePolicy",
    "Agent",
    "EnforceStage",
    "FilePolicyProvider",
    "PolicyProvider",
    "SnapshotSource",
    "TickResult",
    "build_agent",
    "enforce_findings",
    "enforce_once",
    "make_notifier",
    "violation_for",
]
