"""The policy engine's evaluate, without evaluating again what cannot have changed since the last scan.

Why: an idle machine's scan sees the same processes as the last one. The engine's answer for a
process depends on that process's record, its connections, its P2P behaviour and the policy,
and on nothing else (policy/engine.py evaluates each process on its own). The incremental
collector hands out the very same `ProcessInfo` object while a process instance runs the
same program unchanged, so a process with the same record object, no connections and no
behaviour now and at its last evaluation, under the same compiled policy, gets the findings
it got then. Everything else is evaluated by the engine as before; the result is the same
list, in the engine's order (by pid, then rule order).

Telling which records are other objects would still cost a step per process; a snapshot whose
`delta` continues the last one (types.SnapshotDelta) names them, so a scan that trusts process
events costs here what changed, not what runs.

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
        self._memo: dict[int, tuple[ProcessInfo, list[Finding]]] = {}  # quiet processes
        self._loud: set[int] = set()  # the other processes of the last snapshot
        self._found: dict[int, list[Finding]] = {}  # every process with findings, by pid
        self._token: object = None  # the last snapshot's SnapshotDelta token
        self.reused = 0  # processes answered from the memo (for tests and diagnostics)

    def __call__(self, snapshot: Snapshot, compiled: Any) -> list[Finding]:
        if compiled is not self._compiled:
            self._memo.clear()
            self._loud.clear()
            self._found.clear()
            self._token = None
            self._compiled = compiled
        processes = snapshot.processes
        delta = snapshot.delta
        busy = {c.pid for c in snapshot.connections if c.pid is not None}
        busy.update(pid for pid, _ in snapshot.behaviour)
        busy = {pid for pid in busy if pid in processes}
        if delta is not None and self._token is not None and delta.base is self._token:
            # The collector names what changed: an unchanged quiet process costs nothing here.
            for pid in delta.removed:
                self._memo.pop(pid, None)
                self._found.pop(pid, None)
                self._loud.discard(pid)
            fresh_pids = {pid for pid in delta.changed | self._loud | busy if pid in processes}
        else:
            self._memo = {p: m for p, m in self._memo.items() if processes.get(p) is m[0]}
            self._found = {p: f for p, f in self._found.items() if p in self._memo}
            self._loud.clear()  # every process not in the memo is evaluated now
            fresh_pids = (processes.keys() - self._memo.keys()) | busy
        self._token = delta.token if delta is not None else None
        self.reused += len(processes) - len(fresh_pids)
        if fresh_pids:
            fresh = {pid: processes[pid] for pid in sorted(fresh_pids)}
            part = snapshot
            if len(fresh) < len(processes):
                connections = tuple(c for c in snapshot.connections if c.pid in fresh)
                part = dataclasses.replace(snapshot, processes=fresh, connections=connections, delta=None)
            by_pid: dict[int, list[Finding]] = {}
            for finding in self._evaluate(part, compiled):
                by_pid.setdefault(finding.process.pid, []).append(finding)
            for pid, proc in fresh.items():
                findings = by_pid.get(pid, [])
                if findings:
                    self._found[pid] = findings
                else:
                    self._found.pop(pid, None)
                if pid in busy:
                    self._memo.pop(pid, None)
                    self._loud.add(pid)
                else:
                    self._memo[pid] = (proc, findings)
                    self._loud.discard(pid)
        return [f for pid in sorted(self._found) for f in self._found[pid]]


__all__ = ["FindingsMemo"]
