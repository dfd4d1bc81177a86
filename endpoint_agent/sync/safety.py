"""Safe activation: before a new policy may enforce, dry-run it against the machine as it is now.

A policy is unsafe when one of its block rules matches a protected process (the guard would
refuse, but a rule that reaches sshd or the init system is a mistake, and its siblings are
likely wrong too), or when it would stop more than `max_share` of the running processes
(a policy blocking `*`). An unsafe policy still becomes active -- in monitor mode only, so
what it would have done is recorded -- and is reported as `policy_unsafe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from endpoint_agent.decide import ProtectionCheck
from endpoint_agent.types import Finding, RuleAction, Snapshot

Evaluator = Callable[[Snapshot, Any], list[Finding]]
SnapshotFn = Callable[[], Snapshot]
_SAMPLES = 5


@dataclass(frozen=True)
class SafetyVerdict:
    safe: bool
    reason: str
    processes: int = 0
    would_stop: int = 0
    protected: tuple[str, ...] = ()  # a few "name (pid N): why" of protected processes it targets

    def to_json(self) -> dict[str, object]:
        return {
            "safe": self.safe,
            "reason": self.reason,
            "processes": self.processes,
            "would_stop": self.would_stop,
            "protected": list(self.protected),
        }


def _evaluate(snapshot: Snapshot, compiled: Any) -> list[Finding]:
    from endpoint_agent.policy import evaluate

    return list(evaluate(snapshot, compiled))


class DryRun:
    def __init__(
        self,
        snapshot: SnapshotFn,
        guard: ProtectionCheck,
        *,
        max_share: float = 0.10,
        evaluate: Evaluator = _evaluate,
    ) -> None:
        if not 0 < max_share <= 1:
            raise ValueError("max_share must be in (0, 1]")
        self._snapshot = snapshot
        self._guard = guard
        self._max_share = max_share
        self._evaluate = evaluate

    def assess(self, compiled: Any) -> SafetyVerdict:
        """The verdict for `compiled` on a fresh snapshot; CollectError when none can be taken."""
        snapshot = self._snapshot()
        findings = self._evaluate(snapshot, compiled)
        targets: dict[tuple[int, float], Finding] = {}
        for f in findings:
            if f.action is RuleAction.BLOCK:
                targets[(f.process.pid, f.process.create_time)] = f
        protected = []
        for f in targets.values():
            why = self._guard.check(f.process)
            if why is not None:
                protected.append(f"{f.process.name} (pid {f.process.pid}, rule {f.rule_id}): {why}")
        total, stop = len(snapshot.processes), len(targets)
        samples = tuple(sorted(protected)[:_SAMPLES])
        if protected:
            reason = f"its block rules match {len(protected)} protected process(es), e.g. {samples[0]}"
            return SafetyVerdict(False, reason, total, stop, samples)
        if stop > self._max_share * total:
            reason = (
                f"it would stop {stop} of {total} running processes, more than the allowed share "
                f"of {self._max_share:.0%}"
            )
            return SafetyVerdict(False, reason, total, stop)
        return SafetyVerdict(True, f"it would stop {stop} of {total} running processes", total, stop)


__all__ = ["DryRun", "SafetyVerdict"]
