"""The agent's view of this machine, composed for the scan loop and the one-shot `scan`.

    collector = machine_collector()          # once: keeps the hash cache
    evaluate = BehaviourEvaluator()          # once: keeps the P2P behaviour window
    findings = evaluate(collector.snapshot(), compiled)   # every scan, in order

`machine_collector()` gives processes their owning system package (collect.package_trust,
for the unapproved check) and, on Linux, the sockets of every network namespace, labelled
with their namespace (collect.netns_sockets), so a client in a container or behind
`unshare --net` is seen. `BehaviourEvaluator` is the policy engine's `evaluate` with the P2P
behaviour of every process (collect.behaviour) added to each snapshot over the window the
active policy asks for; it has the Evaluator signature the agent takes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from endpoint_agent.collect.behaviour import BehaviourTracker
from endpoint_agent.collect.netns_sockets import all_namespace_sockets
from endpoint_agent.collect.snapshot import Collector
from endpoint_agent.types import Finding, Snapshot

_LINUX = sys.platform.startswith("linux")


def machine_collector() -> Collector:
    """A Collector that sees every network namespace where the OS has them (Linux)."""
    return Collector(sockets=all_namespace_sockets) if _LINUX else Collector()


class BehaviourEvaluator:
    """evaluate(snapshot, compiled) after adding P2P behaviour; call it once per scan, in order.

    Stateful by design (the window of past scans), unlike the engine it wraps.
    """

    def __init__(
        self,
        *,
        tracker: BehaviourTracker | None = None,
        evaluate: Callable[[Snapshot, Any], list[Finding]] | None = None,
    ) -> None:
        self.tracker = tracker if tracker is not None else BehaviourTracker()
        if evaluate is None:
            from endpoint_agent.policy import evaluate as engine

            evaluate = engine
        self._evaluate = evaluate

    def annotate(self, snapshot: Snapshot, compiled: Any) -> Snapshot:
        """The snapshot with `behaviour` over the window `compiled` (a CompiledPolicy) asks for."""
        return self.tracker.annotate(snapshot, getattr(compiled, "p2p_window_scans", None))

    def __call__(self, snapshot: Snapshot, compiled: Any) -> list[Finding]:
        return list(self._evaluate(self.annotate(snapshot, compiled), compiled))


def scan_once(compiled: Any) -> list[Finding]:
    """One scan of this machine (`endpoint-agent scan`): behaviour from this scan alone."""
    return BehaviourEvaluator()(machine_collector().snapshot(), compiled)


__all__ = ["BehaviourEvaluator", "machine_collector", "scan_once"]
