"""The composition root of `endpoint-agent run`: every part, built once, and what they add up to.

`Service` keeps a reference to each part (settings, clock, store, collector, policy source,
guard, enforcer, notifier, circuit breaker, break-glass file, the agent's tick) and the optional
parts registered with it (`register(Part)`); it hands the scheduler their jobs (`jobs()`),
composes status.json from their status (`status()`), tells listeners what happened (its
`Signal`s) and closes them in reverse order (`close()`). See endpoint_agent/service/__init__.py
for how a new part joins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from datetime import UTC, datetime

import psutil

from endpoint_agent import __version__
from endpoint_agent.agent import Agent
from endpoint_agent.clock import Clock
from endpoint_agent.collect.api import MachineCollector
from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.enforce.circuit import CircuitBreaker
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.enforce.notify import Notifier
from endpoint_agent.enforce.terminate import Enforcer
from endpoint_agent.errors import AgentError
from endpoint_agent.policy import PolicyProvider
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.service.part import JobSpec, Part, Signal
from endpoint_agent.service.status_file import write_status
from endpoint_agent.settings import AgentSettings
from endpoint_contract.timestamps import iso_utc

logger = logging.getLogger(__name__)


class Service:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Clock,
        store: ViolationStore,
        collector: MachineCollector,
        policy: PolicyProvider,
        guard: Guard,
        enforcer: Enforcer,
        notifier: Notifier,
        circuit: CircuitBreaker,
        break_glass: BreakGlass,
        agent: Agent,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.collector = collector
        self.policy = policy
        self.guard = guard
        self.enforcer = enforcer
        self.notifier = notifier
        self.circuit = circuit
        self.break_glass = break_glass
        self.agent = agent
        # Whether exec events drive the reaction (then full scans are only the safety net).
        self.process_events = False
        # A new policy was activated: it applies to what already runs at once (the scan is connected
        # first), not at the next full scan.
        self.policy_activated = Signal("policy_activated")
        self.policy_activated.connect(self.scan)
        # A full scan ended (successfully or not); `agent.last` is the latest result.
        self.scanned = Signal("scanned")
        self._parts: list[Part] = []
        self._identity = _process_identity()

    # -- parts ---------------------------------------------------------------------------------

    def register(self, part: Part) -> None:
        if any(p.name == part.name for p in self._parts):
            raise ValueError(f"a part named {part.name!r} is already registered")
        self._parts.append(part)

    @property
    def parts(self) -> tuple[Part, ...]:
        return tuple(self._parts)

    def jobs(self) -> list[JobSpec]:
        """The scan first, then every part's jobs in the order the parts were registered."""
        return [JobSpec("scan", self.scan, self.scan_interval), *(j for p in self._parts for j in p.jobs)]

    # -- the scan and the status ---------------------------------------------------------------

    @property
    def scan_interval(self) -> float:
        """The safety-net interval while exec events drive the reaction, else the polling one."""
        return self.settings.effective_scan_interval(events=self.process_events)

    def scan(self) -> None:
        try:
            self.agent.tick()
        finally:
            self.scanned.emit()
            self.write_status("running")

    def status(self, state: str) -> dict[str, object]:
        data: dict[str, object] = {
            **self.agent.status(),
            **self._identity,
            "state": state,
            "agent_version": __version__,
            "state_dir": str(self.settings.state_dir),
            "scan_interval": self.scan_interval,
            "updated_at": iso_utc(datetime.now(UTC)),
            # Its own CPU time so far, every thread, to the microsecond (the kernel's per-process
            # tick counts are 10 ms: too coarse for what an idle scan costs).
            "cpu_seconds": round(time.process_time(), 6),
        }
        for part in self._parts:
            if part.status is None:
                continue
            if part.status_at_top:
                data.update(part.status())
            else:
                data[part.status_key or part.name] = dict(part.status())
        return data

    def write_status(self, state: str) -> None:
        try:
            write_status(self.settings.status_path, self.status(state))
        except OSError as exc:
            logger.error("cannot write %s: %s", self.settings.status_path, exc.strerror or exc)

    # -- shutdown ------------------------------------------------------------------------------

    def drain(self, timeout: float) -> None:
        """After a clean stop: let queued user notifications go out (bounded)."""
        self.notifier.close(timeout)

    def close(self) -> None:
        """Every part's `close`, newest first, then the store; safe to call twice."""
        for part in reversed(self._parts):
            if part.close is not None:
                try:
                    part.close()
                except Exception:
                    logger.exception("closing %s failed", part.name)
        with contextlib.suppress(AgentError):
            self.store.close()


def _process_identity() -> dict[str, object]:
    try:
        create_time: float | None = psutil.Process().create_time()
    except psutil.Error:
        create_time = None
    return {"pid": os.getpid(), "process_create_time": create_time}


__all__ = ["Service"]
