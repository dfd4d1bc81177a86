"""Building the service from the settings: each part once, in dependency order, then the optional parts.

    service = build_service(settings)   # the store is open and the policy loaded when this returns
    ...
    service.close()

A start-up problem raises AgentError (SettingsError, ...) after closing what was already built.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from endpoint_agent.agent import CIRCUIT_META_KEY, Agent
from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.collect.api import MachineCollector, open_collector
from endpoint_agent.dns.addrmap import AnnotatingSource
from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.enforce.circuit import CircuitState
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.enforce.notify import Notifier
from endpoint_agent.enforce.scope import make_guard
from endpoint_agent.enforce.stage import make_circuit, make_enforcer, make_notifier
from endpoint_agent.enforce.terminate import BlockAction, Enforcer
from endpoint_agent.errors import SettingsError
from endpoint_agent.evaluate import BehaviourEvaluator, evaluate_alone
from endpoint_agent.findings_memo import FindingsMemo
from endpoint_agent.policy import PolicyProvider
from endpoint_agent.report.event_log import EventLog
from endpoint_agent.report.salvage import requeue_damaged
from endpoint_agent.report.store import StoreCorrupt, StoreLimits, ViolationStore
from endpoint_agent.service.part import JobSpec, Part
from endpoint_agent.service.root import Service
from endpoint_agent.settings import AgentSettings
from endpoint_agent.sync.local import FilePolicyProvider, file_policy_loader
from endpoint_agent.types import Violation

if TYPE_CHECKING:
    from endpoint_agent.dns.service import NetGuard, Record
    from endpoint_agent.sync.service import PolicySyncService

logger = logging.getLogger(__name__)

PartBuilder = Callable[[Service], "Part | None"]


def build_service(
    settings: AgentSettings,
    *,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    enforcer: Enforcer | None = None,
) -> Service:
    """The production wiring; tests pass doubles for the parts that cannot run here."""
    clock = clock or SystemClock()
    with contextlib.ExitStack() as undo:
        store = open_store(settings)
        undo.callback(store.close)
        if settings.event_log is not None:
            # Every recorded violation as an OCSF line, once durable (a store listener).
            event_log = EventLog(
                settings.event_log, max_bytes=settings.event_log_max_bytes, backups=settings.event_log_backups
            )
            store.on_commit(event_log.record)
        # The incremental /proc reader where it can run; executables hashed only while the active
        # policy has a sha256 rule (collect/hashing.py). `policy` is bound below, before any scan.
        collector = open_collector(clock=clock, want_hashes=lambda: _wants_sha256(policy))

        # The DNS filter and nftables table; the scans' connections carry the domains it learned.
        def record(violations: Sequence[Violation], events: Sequence[dict[str, object]]) -> None:
            agent.record(violations, events)  # the agent's store and dedup, durably

        netguard = _open_netguard(settings, clock, record=record)
        undo.callback(netguard.stop)
        source = AnnotatingSource(collector, netguard.addresses)
        guard = make_guard(settings)  # narrowed to a test scope when the settings ask for one
        # Server mode records policy events in the store, and judges a new policy with this
        # collector and guard; the last good policy is loaded here.
        policy, sync = build_policy_source(settings, store, collector=collector, guard=guard)
        enforcer = enforcer or make_enforcer(settings, guard)
        notifier = notifier or make_notifier(settings, clock)
        circuit = make_circuit(settings, clock, CircuitState.from_json(store.get_meta(CIRCUIT_META_KEY)))
        break_glass = BreakGlass(settings.break_glass_file)
        agent = Agent(
            policy=policy,
            source=source,
            # The policy engine plus the P2P behaviour window; an unchanged quiet process is not
            # evaluated again.
            evaluate=BehaviourEvaluator(evaluate=FindingsMemo()),
            react_evaluate=evaluate_alone,  # a new process's behaviour from its own snapshot only
            guard=guard,
            enforcer=enforcer,
            notifier=notifier,
            store=store,
            circuit=circuit,
            break_glass=break_glass,
            clock=clock,
            block_action=BlockAction(settings.block_action),
            max_unsaved=settings.store_max_unsaved_events,
        )
        service = Service(
            settings,
            clock=clock,
            store=store,
            collector=collector,
            policy=policy,
            guard=guard,
            enforcer=enforcer,
            notifier=notifier,
            circuit=circuit,
            break_glass=break_glass,
            agent=agent,
        )
        undo.callback(service.close)
        service.register(
            Part("collector", status=lambda: {"hashing": collector.hash_status()}, status_at_top=True)
        )
        if netguard is not None:
            service.register(_netguard_part(service, netguard))
        service.register(_reaction_part(service))
        gate = _gate_part(service)  # `exec_gate: on` where impossible raises (exit 2)
        service.register(gate.part)
        if sync is not None:
            # The report job shares the sync's client (one enrollment, one node key); registered
            # first, so that its final flush at shutdown runs before policy sync closes the client.
            service.register(_report_part(service, sync, gate.counters))
            service.register(_policy_sync_part(service, sync))
        for builder in PART_BUILDERS:
            part = builder(service)
            if part is not None:
                service.register(part)
        undo.pop_all()
    return service


# -- the parts every service has -------------------------------------------------------------


def open_store(settings: AgentSettings) -> ViolationStore:
    """A damaged store is kept aside for forensics and replaced: enforcement must not stop over it."""
    limits = StoreLimits(settings.store_max_events, settings.store_max_bytes, settings.store_min_free_bytes)
    path = settings.store_path
    try:
        return ViolationStore.open(path, limits)
    except StoreCorrupt as exc:
        aside = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        logger.error("%s; moved to %s, starting a new store", exc, aside)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        store = ViolationStore.open(path, limits)
        requeue_damaged(store, aside, str(exc))  # what is lost is said: a store_damaged agent event
        return store


def build_policy_source(
    settings: AgentSettings,
    store: ViolationStore | None = None,
    *,
    collector: MachineCollector | None = None,
    guard: Guard | None = None,
) -> tuple[PolicyProvider, PolicySyncService | None]:
    """Standalone mode reads --policy FILE; server mode syncs signed policies (it records into `store`,
    and its safety dry run uses the service's `collector` and `guard`)."""
    if settings.policy is not None:
        if not settings.policy.is_file():
            raise SettingsError(f"invalid setting policy: {settings.policy}: not found or not a regular file")
        return FilePolicyProvider(settings.policy, load=file_policy_loader(settings.public_keys)), None
    if settings.server is not None:
        if store is None or collector is None or guard is None:
            raise SettingsError("server mode needs the local store, the collector and the guard")
        # Imported here: a standalone service never loads httpx or cryptography.
        from endpoint_agent.sync.service import build_policy_sync

        sync = build_policy_sync(settings, store=store, snapshot=collector.snapshot, guard=guard)
        return sync, sync
    raise SettingsError("no policy source: give --policy FILE (standalone) or --server URL")


def _reaction_part(service: Service) -> Part:
    """Exec events between scans (the watcher's thread is restarted if it ever died), else polling."""
    settings = service.settings
    watcher = None
    if not settings.process_events:
        logger.info(
            "process events off (process_events: false); full scans every %gs",
            settings.effective_scan_interval(False),
        )
    else:
        from endpoint_agent.exec_triage import ExecTriage
        from endpoint_agent.watch import open_reaction

        agent, collector, policy = service.agent, service.collector, service.policy

        def compiled() -> object:
            active = policy.current()
            return active.compiled if active is not None else None

        # Per-binary answers from the active policy, with the collector's hash and package caches.
        triage = ExecTriage(compiled, digest=collector.binary_digest, package=collector.binary_package)
        watcher = open_reaction(
            react=lambda pids: agent.react(lambda: collector.snapshot_of(pids)),
            rescan=service.scan,
            forget=collector.forget,
            triage=triage,
            lost=collector.distrust,
        )
        if watcher is not None:
            # Scans stop re-reading every process while the events keep the collector's cache current.
            live = watcher
            scans = settings.rewalk_interval / settings.effective_scan_interval(True)
            collector.track(
                rewalk_scans=max(1, math.ceil(scans)),
                trusted=lambda: live.events_live,
                sockets_wanted=lambda: _uses_connections(policy),
            )
            watcher.tracking = lambda: collector.tracking
    if watcher is None:
        return Part("reaction", status=lambda: {"mode": "polling"}, status_key="process_events")
    service.process_events = True
    return Part(
        "reaction",
        jobs=[
            JobSpec(
                "exec-watcher", watcher.ensure_running, 60.0, run_at_start=False, at_shutdown=watcher.stop
            )
        ],
        status=watcher.status,
        status_key="process_events",
        close=watcher.stop,  # idempotent
    )


def _wants_sha256(policy: PolicyProvider) -> bool:
    """Hash executables only while the active policy has a sha256 condition (collect/hashing.py)."""
    active = policy.current()
    return active is not None and active.compiled.uses_sha256


def _uses_connections(policy: PolicyProvider) -> bool:
    """Whether scans must read sockets: the active policy has network rules (or none is known yet)."""
    active = policy.current()
    return active is None or active.compiled.uses_connections


def _open_netguard(settings: AgentSettings, clock: Clock, *, record: Record) -> NetGuard:
    """The DNS filter and nftables part; it first undoes what a killed agent left behind."""
    from endpoint_agent.dns.service import NetGuard

    netguard = NetGuard(settings, clock=clock, record=record)
    netguard.recover_left_over()
    return netguard


def _netguard_part(service: Service, netguard: NetGuard) -> Part:
    """The filter follows the policy and the mode after every scan; stopping restores the resolver
    and removes the table."""
    agent = service.agent

    def follow() -> None:
        last = agent.last
        if last is not None:
            netguard.update(last.policy, last.mode)

    service.scanned.connect(follow)
    return Part("netguard", status=netguard.status, status_at_top=True, close=netguard.stop)


@dataclass(frozen=True)
class _Gate:
    part: Part
    counters: Callable[[], Mapping[str, int]] | None  # for the heartbeat


def _gate_part(service: Service) -> _Gate:
    """The exec gate: programs judged before they run; its supervisor restarted if it ever died."""
    from endpoint_agent.gate.service import start_gate

    gate = start_gate(
        service.settings,
        agent=service.agent,
        store=service.store,
        policy=service.policy,
        # Its own: the gate's reports close their notifier when the gate stops.
        notifier=make_notifier(service.settings, service.clock),
        clock=service.clock,
        snapshot_of=service.collector.snapshot_of,
    )
    if gate is None:
        return _Gate(Part("exec_gate", status=lambda: {"state": "off"}), None)

    def gate_job() -> None:
        gate.ensure_running()
        service.write_status("running")

    part = Part(
        "exec_gate",
        jobs=[JobSpec("exec-gate", gate_job, 5.0, run_at_start=False, at_shutdown=gate.stop)],
        status=gate.status,
        close=gate.stop,  # idempotent
    )
    return _Gate(part, gate.counters)


def _report_part(
    service: Service, sync: PolicySyncService, gate_counters: Callable[[], Mapping[str, int]] | None
) -> Part:
    from endpoint_agent.report.service import build_report_job, report_tick_seconds

    settings = service.settings
    counters = sync.sync.counters
    report = build_report_job(
        settings,
        store=service.store,
        client=sync.client,
        pulse=service.agent.pulse,
        policy_rejections=lambda: counters["rejected"],
        extra_counters=gate_counters,
    )
    return Part(
        "report",
        jobs=[JobSpec("report", report.tick, report_tick_seconds(settings), at_shutdown=report.flush)],
        status=report.status,
    )


def _policy_sync_part(service: Service, sync: PolicySyncService) -> Part:
    """The poll thread, started at once and restarted if it ever died."""
    sync.on_activated = service.policy_activated.emit
    return Part(
        "policy_sync",
        jobs=[JobSpec("policy-sync", sync.ensure_running, sync.watchdog_seconds, at_shutdown=sync.stop)],
        status=sync.status,
    )


# Optional parts, built after every part above, in this order; each returns None when it is off
# or cannot run here (see endpoint_agent/service/__init__.py).
PART_BUILDERS: tuple[PartBuilder, ...] = ()


__all__ = ["PART_BUILDERS", "PartBuilder", "build_policy_source", "build_service", "open_store"]
