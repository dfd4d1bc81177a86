"""`scan --enforce`: the decide -> enforce -> notify path once, with every safety rail of the service.

No store and no dedup across runs; one violation per finding with what was done.
"""

from __future__ import annotations

from collections.abc import Sequence

from endpoint_agent.agent import violation_for
from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.decide import Decider, Deduplicator, Mode, ModeDecision, ProtectionCheck, resolve_mode
from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.enforce.circuit import CircuitBreaker
from endpoint_agent.enforce.notify import Notifier
from endpoint_agent.enforce.scope import make_guard
from endpoint_agent.enforce.stage import (
    EnforceStage,
    make_circuit,
    make_enforcer,
    make_notifier,
    notify_stopped,
)
from endpoint_agent.enforce.terminate import BlockAction, Enforcer
from endpoint_agent.settings import AgentSettings, load_settings
from endpoint_agent.types import Finding, Violation


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
    notify_stopped(notifier, acted)
    now = clock.now()
    out = []
    for a in acted:
        entry = dedup.observe(a.decision.finding, a.outcome, policy_version).entry
        out.append(violation_for(a, entry, policy_version, now))
    return out


def enforce_once(
    findings: Sequence[Finding],
    *,
    policy_version: int,
    policy_mode: str,
    settings: AgentSettings | None = None,
    honor_policy_mode: bool = False,
) -> list[Violation]:
    """`scan --enforce`: stop what block rules match, with every safety rail of the service.

    The guard, the break-glass file and a circuit breaker (fresh for this run) apply; the
    policy's own mode is consulted only with `honor_policy_mode` (the flag is the operator's
    explicit request to enforce).
    """
    settings = settings or load_settings({})
    clock = SystemClock()
    guard = make_guard(settings)  # the same guard as the service, test scope included
    break_glass = BreakGlass(settings.break_glass_file).check()
    mode = resolve_mode(
        policy_mode if honor_policy_mode else Mode.ENFORCE.value, break_glass=break_glass.active
    )
    notifier = make_notifier(settings, clock)
    try:
        return enforce_findings(
            findings,
            policy_version,
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


__all__ = ["enforce_findings", "enforce_once"]
