"""A test-only enforcement scope: only descendants of one chosen process may be signalled.

Tests and benchmarks that let a real agent (in the host PID namespace, where process exec
events work) stop real processes set `enforce_scope_pid` to their own process. The agent then
treats every process that does not descend from that exact process instance as protected
("outside the enforcement scope"), on top of every protection of `Guard`. Combined with a policy
whose only block rule names the test's unique stand-in, nothing else on the machine can be
signalled. The scope can only narrow what the agent may do, never widen it.

The scope process is identified by PID and start time, read when the agent starts; if it exits
(or its PID is reused), nothing is in scope any more.
"""

from __future__ import annotations

import logging

import psutil

from endpoint_agent.enforce.guard import Guard, Protection
from endpoint_agent.errors import SettingsError
from endpoint_agent.settings import AgentSettings
from endpoint_agent.types import ProcessInfo

logger = logging.getLogger(__name__)

_CREATE_TIME_TOLERANCE = 0.005  # as enforce.terminate: the kernel's resolution is 10 ms


class ScopedGuard(Guard):
    """A `Guard` that also protects every process outside the descendants of `root_pid`."""

    def __init__(self, root_pid: int, *, extra: tuple[str, ...] = (), agent_pid: int | None = None) -> None:
        super().__init__(extra=extra, agent_pid=agent_pid)
        try:
            self._root_started = psutil.Process(root_pid).create_time()
        except (psutil.Error, OSError) as exc:
            raise SettingsError(
                f"invalid setting enforce_scope_pid: no process {root_pid} to scope enforcement to"
            ) from exc
        self._root = root_pid
        self._outside = Protection(f"outside the enforcement scope (descendants of pid {root_pid})")
        logger.warning("enforcement limited to descendants of pid %d (test scope)", root_pid)

    @property
    def root_pid(self) -> int:
        return self._root

    def check(self, proc: ProcessInfo) -> Protection | None:
        return super().check(proc) or self._scope(proc)

    def check_live(self, proc: ProcessInfo, process: psutil.Process) -> Protection | None:
        return super().check_live(proc, process) or self._scope(proc)

    def in_scope(self, proc: ProcessInfo) -> bool:
        return self._scope(proc) is None

    def _scope(self, proc: ProcessInfo) -> Protection | None:
        """None when `proc` (this very instance) descends from the scope process; fail safe otherwise."""
        try:
            process = psutil.Process(proc.pid)
            if abs(process.create_time() - proc.create_time) > _CREATE_TIME_TOLERANCE:
                return self._outside  # another process has this PID now
            for parent in process.parents():
                if parent.pid == self._root:
                    started = parent.create_time()
                    return (
                        None if abs(started - self._root_started) <= _CREATE_TIME_TOLERANCE else self._outside
                    )
        except (psutil.Error, OSError):
            return self._outside
        return self._outside


def make_guard(settings: AgentSettings) -> Guard:
    """The agent's guard: the plain one, or one narrowed to the test scope the settings name."""
    if settings.enforce_scope_pid is None:
        return Guard(extra=settings.protected_extra)
    return ScopedGuard(settings.enforce_scope_pid, extra=settings.protected_extra)


__all__ = ["ScopedGuard", "make_guard"]
