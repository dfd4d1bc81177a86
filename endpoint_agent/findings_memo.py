"""The policy engine's evaluate, without evaluating again what cannot have changed since the last scan.

Why: an idle machine's scan sees the same processes as the last one. The engine's answer for a
process depends on that process's record, its connections, its P2P behaviour and the policy,
and on nothing else (policy/engine.py evaluates each process on its own). The incremental
collector hands out the very same `ProcessInfo` object while a process instance runs the
same program unchanged, so a process with the same record object, no connections and no
behaviour now and at its last evaluation, under the same compiled policy, gets the findings
it got then. Everything else is evaluated by the engine as before; the result is the same
list, in the engine's order (by pid, then rule order).

Stateful (one per scan loop); the engine itself stays pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from endpoint_agent.types import Finding, ProcessInfo, Snapshot

Evaluate = Callable[[Snapshot, Any], list[Finding]]


def _engine(snapshot: Snapshot, compiled: Any) -> list[Finding]:
    from endpoint_agent.policy import evaluate

    return list(evaluate(snapshot, compiled))


class FindingsMemo:
    def __init__(self, evaluate: Evaluate | None = None) -> None:
        self._evaluate = evaluate or _engine
        self._compiled: object = None
        self._memo: dict[int, tuple[ProcessInfo, list[Finding]]] = {}
        self.reused = 0  # processes answered from the memo (for tests and diagnostics)

    def __call__(self, snapshot: Snapshot, compiled: Any) -> list[Finding]:
        if compiled is not self._compiled:
            self._memo.clear()
            self._compiled = compiled
        busy = {c.pid for c in snapshot.connections if c.pid is not None}
        quiet = {
            pid
            for pid, p in snapshot.processes.items()
            if pid not in busy and p.key not in snapshot.behaviour
        }
        by_pid: dict[int, list[Finding]] = {}
        fresh: dict[int, ProcessInfo] = {}
        for pid, proc in snapshot.processes.items():
            memo = self._memo.get(pid)
            if memo is not None and memo[0] is proc and pid in quiet:
                by_pid[pid] = memo[1]
            else:
                fresh[pid] = proc
        self.reused += len(by_pid)
        if fresh:
            part = snapshot
            if len(fresh) < len(snapshot.processes):
                connections = tuple(c for c in snapshot.connections if c.pid in fresh)
                part = dataclasses.replace(snapshot, processes=fresh, connections=connections)
            for finding in self._evaluate(part, compiled):
                by_pid.setdefault(finding.process.pid, []).append(finding)
        self._memo = {
            pid: (proc, by_pid.get(pid, [])) for pid, proc in snapshot.processes.items() if pid in quiet
        }
        return [f for pid in sorted(by_pid) for f in by_pid[pid]]


__all__ = ["FindingsMemo"]
