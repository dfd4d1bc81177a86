"""The enforce stage: carry out each decision, inside the kill-rate circuit breaker, and tell the user.

Shared by the service's tick (agent.py) and the one-shot `scan --enforce` (oneshot.py):

    stage = EnforceStage(enforcer, circuit, block_action)
    acted = stage.act(decisions, policy_version)  # one Acted per decision
    notify_stopped(notifier, acted)

`make_enforcer`, `make_circuit` and `make_notifier` build the parts the same way for both paths.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from endpoint_agent.clock import Clock
from endpoint_agent.decide import (
    Decision,
    Plan,
)
from endpoint_agent.enforce.circuit import Admission, CircuitBreaker, CircuitState, StopTarget
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.enforce.notify import DesktopNotifier, LogOnlyNotifier, Notification, Notifier
from endpoint_agent.enforce.terminate import BlockAction, Enforcer, EnforceResult, PsutilEnforcer
from endpoint_agent.logfmt import log_fields
from endpoint_agent.settings import AgentSettings
from endpoint_agent.types import Outcome

logger = logging.getLogger(__name__)

_PLAN_OUTCOME = {
    Plan.REPORT: Outcome.REPORTED,
    Plan.WOULD_BLOCK: Outcome.WOULD_BLOCK,
    Plan.PROTECTED: Outcome.PROTECTED,
    Plan.CONNECTION_BLOCKED: Outcome.CONNECTION_BLOCKED,
}
STOPPED = frozenset({Outcome.KILLED, Outcome.SUSPENDED})


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
        if result.outcome in STOPPED:
            self.circuit.record_stop(policy_version, target)
        log = logger.warning if result.outcome in STOPPED else logger.error
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


def notify_stopped(notifier: Notifier, acted: Sequence[Acted]) -> None:
    """Tell each user whose program was just stopped (not again for one stopped before)."""
    for a in acted:
        if a.outcome not in STOPPED or a.decision.plan is Plan.ALREADY_STOPPED:
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


# -- the parts, built the same way for the service and `scan --enforce` ----------------------


def make_enforcer(settings: AgentSettings, guard: Guard) -> Enforcer:
    return PsutilEnforcer(guard, grace_seconds=settings.kill_grace_seconds, tree=settings.kill_tree)


def make_circuit(settings: AgentSettings, clock: Clock, state: CircuitState | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        clock=clock,
        max_kills=settings.circuit_max_kills,
        window_seconds=settings.circuit_window_seconds,
        state=state,
    )


def make_notifier(settings: AgentSettings, clock: Clock) -> Notifier:
    if not settings.notify:
        return LogOnlyNotifier()
    return DesktopNotifier(
        clock=clock, timeout=settings.notify_timeout_seconds, min_interval=settings.notify_interval_seconds
    )


__all__ = [
    "STOPPED",
    "Acted",
    "EnforceStage",
    "make_circuit",
    "make_enforcer",
    "make_notifier",
    "notify_stopped",
]
