"""Wiring of the exec gate into the service (the one place that knows the agent's parts).

    gate = start_gate(settings, agent)    # None: off (setting, platform, privileges); `on` raises instead
    gate.status()                         # for status.json and the heartbeat
    gate.stop()

`exec_gate: auto` turns the gate on where it can work: Linux 5.0 or later, root, fanotify
permission events in the kernel. It stays off under the test-only enforcement scope
(`enforce_scope_pid`), whose agents run in the host's mount namespace. `on` refuses to start
the service where the gate cannot work, with the reason.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from endpoint_agent.clock import Clock
from endpoint_agent.decide import Mode, resolve_mode
from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.errors import SettingsError
from endpoint_agent.gate.fanotify import FanotifyGroup, GateUnavailable
from endpoint_agent.gate.protocol import GateConfig
from endpoint_agent.gate.reports import GateReports
from endpoint_agent.gate.supervisor import GateSupervisor
from endpoint_agent.settings import AgentSettings

if TYPE_CHECKING:
    from endpoint_agent.agent import Agent
    from endpoint_agent.enforce.notify import Notifier
    from endpoint_agent.policy import PolicyProvider
    from endpoint_agent.report.store import ViolationStore
    from endpoint_agent.types import Snapshot

logger = logging.getLogger(__name__)


def unavailable_reason() -> str | None:
    """Why the gate cannot run here; None when it can."""
    if not sys.platform.startswith("linux"):
        return f"the exec gate is built for Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the exec gate needs root (CAP_SYS_ADMIN for fanotify permission events)"
    try:
        major, minor = (int(p) for p in os.uname().release.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) < (5, 0):
        return f"the exec gate needs Linux 5.0 or later for FAN_OPEN_EXEC_PERM (this is {os.uname().release})"
    try:
        FanotifyGroup.open().close()  # no mark: nothing is ever held by this probe
    except GateUnavailable as exc:
        return str(exc)
    return None


def gate_wanted(settings: AgentSettings) -> bool:
    """Whether to run the gate; SettingsError for `on` where it cannot run."""
    if settings.exec_gate == "off":
        logger.info("exec gate off (exec_gate: off)")
        return False
    why = unavailable_reason()
    if settings.exec_gate == "on":
        if why is not None:
            raise SettingsError(f"invalid setting exec_gate: on, but {why}")
        return True
    if settings.enforce_scope_pid is not None:
        logger.info("exec gate off: the test-only enforcement scope is set")
        return False
    if why is not None:
        logger.info("exec gate off: %s", why)
        return False
    return True


@dataclass
class _Source:
    """The gate's configuration from the agent's active policy and safety rails, now."""

    settings: AgentSettings
    agent: Agent
    break_glass: BreakGlass
    policy: PolicyProvider
    _cached: tuple[int, GateConfig] | None = None

    def __call__(self) -> GateConfig | None:
        active = self.policy.current()
        if active is None:
            return None
        glass = self.break_glass.check()
        mode = resolve_mode(
            active.mode,
            break_glass=glass.active,
            circuit_open=self.agent.gate_circuit_open(active.version),
        )
        if active.monitor_reason is not None and mode.mode is Mode.ENFORCE:
            mode = type(mode)(Mode.MONITOR, active.monitor_reason)
        enforce = mode.mode is Mode.ENFORCE
        cached = self._cached
        if cached is None or cached[0] != id(active):
            config = GateConfig(
                policy=active.compiled.policy.model_dump(mode="json"),
                agent_pid=os.getpid(),
                enforce=enforce,
                mode_reason=mode.reason,
                protected_extra=self.settings.protected_extra,
                unsafe_share=self.settings.unsafe_kill_share,
                mounts_of_pid=1 if self.settings.exec_gate_mounts == "init" else None,
            )
            self._cached = (id(active), config)
            return config
        config = cached[1]
        if config.enforce != enforce or config.mode_reason != mode.reason:
            from dataclasses import replace

            config = replace(config, enforce=enforce, mode_reason=mode.reason)
            self._cached = (id(active), config)
        return config


class ExecGate:
    """The running gate: its supervisor and the reports it feeds into the store."""

    def __init__(self, supervisor: GateSupervisor, reports: GateReports) -> None:
        self.supervisor = supervisor
        self.reports = reports

    def start(self) -> None:
        self.reports.start()
        self.supervisor.start()

    def ensure_running(self) -> None:
        self.reports.start()
        self.supervisor.ensure_running()

    def stop(self) -> None:
        self.supervisor.stop()
        self.reports.stop()

    def status(self) -> dict[str, object]:
        out = self.supervisor.status()
        out["violations_recorded"] = self.reports.recorded
        out["reports_lost"] = self.reports.dropped
        return out

    def counters(self) -> dict[str, int]:
        """For the heartbeat (integers only): on, failed, denials, restarts."""
        status = self.supervisor.status()
        denied = status.get("denied")
        return {
            "exec_gate_on": int(status.get("state") == "on"),
            "exec_gate_failed": int(status.get("state") == "failed"),
            "exec_gate_denials": denied if isinstance(denied, int) else 0,
            "exec_gate_restarts": self.supervisor.restarts,
        }


def start_gate(
    settings: AgentSettings,
    *,
    agent: Agent,
    store: ViolationStore,
    policy: PolicyProvider,
    notifier: Notifier,
    clock: Clock,
    snapshot_of: Callable[[Iterable[int]], Snapshot] | None = None,
) -> ExecGate | None:
    """The running gate (None where off), built from the service's parts (endpoint_agent/service/)."""
    if not gate_wanted(settings):
        return None
    from endpoint_agent.sync.events import StoreEventSink

    sink = StoreEventSink(store, clock)
    reports = GateReports(agent, store, notifier, clock, snapshot_of)

    def on_event(type_: str, detail: Mapping[str, object]) -> None:
        sink.record(type_, detail)

    supervisor = GateSupervisor(
        _Source(settings, agent, BreakGlass(settings.break_glass_file), policy),
        on_report=reports.submit,
        on_event=on_event,
    )
    gate = ExecGate(supervisor, reports)
    gate.start()
    return gate


__all__ = ["ExecGate", "gate_wanted", "start_gate", "unavailable_reason"]
