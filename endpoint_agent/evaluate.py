"""The evaluate stage: the pure policy engine, with the P2P behaviour of each process added first.

    evaluate = BehaviourEvaluator()                       # once: keeps the P2P behaviour window
    findings = evaluate(collector.snapshot(), compiled)   # every scan, in order

`BehaviourEvaluator` is the engine's `evaluate` with the behaviour of every process
(collect.behaviour) added to each snapshot over the window the active policy asks for; it is
stateful by design (the window of past scans), unlike the engine it wraps. `evaluate_alone`
judges a partial snapshot (processes that just started) from that snapshot alone.
"""

from __future__ import annotations

from collections.abc import Callable

from endpoint_agent.collect.behaviour import BehaviourTracker
from endpoint_agent.policy import CompiledPolicy
from endpoint_agent.policy import evaluate as engine
from endpoint_agent.types import Finding, Snapshot

Evaluator = Callable[[Snapshot, CompiledPolicy], list[Finding]]


def evaluate_plain(snapshot: Snapshot, compiled: CompiledPolicy) -> list[Finding]:
    """The engine alone (no behaviour window)."""
    return list(engine(snapshot, compiled))


class BehaviourEvaluator:
    """evaluate(snapshot, compiled) after adding P2P behaviour; call it once per scan, in order."""

    def __init__(self, *, tracker: BehaviourTracker | None = None, evaluate: Evaluator | None = None) -> None:
        self.tracker = tracker if tracker is not None else BehaviourTracker()
        self._evaluate = evaluate or evaluate_plain

    def annotate(self, snapshot: Snapshot, compiled: CompiledPolicy) -> Snapshot:
        """The snapshot with `behaviour` over the window `compiled` asks for."""
        return self.tracker.annotate(snapshot, compiled.p2p_window_scans)

    def __call__(self, snapshot: Snapshot, compiled: CompiledPolicy) -> list[Finding]:
        return list(self._evaluate(self.annotate(snapshot, compiled), compiled))


def evaluate_alone(snapshot: Snapshot, compiled: CompiledPolicy) -> list[Finding]:
    """A partial snapshot's findings, with P2P behaviour from it alone (a fresh, throwaway window)."""
    return BehaviourEvaluator()(snapshot, compiled)


__all__ = ["BehaviourEvaluator", "Evaluator", "evaluate_alone", "evaluate_plain"]
