"""Stopping a process: SIGTERM, a grace period, then SIGKILL; or SIGSTOP (suspend).

Before any signal the target's identity is re-checked: its start time must equal the one the
snapshot recorded, and the guard looks at it again with fresh data. On Linux the process is
first pinned with a pidfd (pidfd_open), then verified, then signalled through that pidfd, so a
PID that is reused at any moment in between can never receive the signal. Elsewhere psutil's
own reuse check (start time) guards each signal.

`--kill-tree` semantics (`tree=True`): descendants found when the target is stopped are
stopped with it, each verified and guard-checked on its own.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import psutil

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.types import Outcome, ProcessInfo

logger = logging.getLogger(__name__)

# psutil derives the start time from the same boot time and clock ticks each time; a difference
# larger than this is another process (the kernel's resolution is 10 ms).
_CREATE_TIME_TOLERANCE = 0.005
_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)
_SIGSTOP = getattr(signal, "SIGSTOP", None)


class BlockAction(StrEnum):
    TERMINATE = "terminate"
    SUSPEND = "suspend"


@dataclass(frozen=True)
class EnforceResult:
    """What happened to one target: `outcome` is KILLED, SUSPENDED, KILL_FAILED or PROTECTED."""

    outcome: Outcome
    detail: str
    signalled: tuple[int, ...] = ()  # every PID that received a signal, the target first


class Enforcer(Protocol):
    def terminate(self, proc: ProcessInfo) -> EnforceResult: ...

    def suspend(self, proc: ProcessInfo) -> EnforceResult: ...


@dataclass
class _Target:
    pid: int
    process: psutil.Process
    pidfd: int | None

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


class _Refused(Exception):
    """The target must not or cannot be signalled; carries the result to report."""

    def __init__(self, result: EnforceResult) -> None:
        super().__init__(result.detail)
        self.result = result


class PsutilEnforcer:
    def __init__(
        self, guard: Guard, *, grace_seconds: float = 3.0, kill_wait_seconds: float = 2.0, tree: bool = False
    ) -> None:
        self._guard = guard
        self._grace = grace_seconds
        self._kill_wait = kill_wait_seconds
        self._tree = tree

    def terminate(self, proc: ProcessInfo) -> EnforceResult:
        try:
            targets = self._targets(proc)
        except _Refused as refused:
            return refused.result
        try:
            return self._terminate(proc, targets)
        finally:
            for t in targets:
                t.close()

    def suspend(self, proc: ProcessInfo) -> EnforceResult:
        if _SIGSTOP is None:
            return EnforceResult(Outcome.KILL_FAILED, "suspend is not supported on this platform")
        try:
            targets = self._targets(proc)
        except _Refused as refused:
            return refused.result
        try:
            sent = [t.pid for t in targets if _send(t, _SIGSTOP) is None]
            if not sent or sent[0] != proc.pid:
                return EnforceResult(Outcome.KILL_FAILED, "SIGSTOP could not be delivered", tuple(sent))
            return EnforceResult(Outcome.SUSPENDED, "SIGSTOP" + _children_note(len(sent) - 1), tuple(sent))
        finally:
            for t in targets:
                t.close()

    # -- the steps ----------------------------------------------------------------------------

    def _targets(self, proc: ProcessInfo) -> list[_Target]:
        root = _pin(proc.pid, proc.create_time)
        try:
            protection = self._guard.check_live(proc, root.process)
            if protection is not None:
                raise _Refused(EnforceResult(Outcome.PROTECTED, f"protected: {protection}"))
            targets = [root]
            if self._tree:
                targets.extend(self._descendants(proc, root))
            return targets
        except BaseException:
            root.close()
            raise

    def _descendants(self, proc: ProcessInfo, root: _Target) -> list[_Target]:
        try:
            children = root.process.children(recursive=True)
        except (psutil.Error, OSError):
            return []
        out = []
        for child in children:
            try:
                target = _pin(child.pid, child.create_time())
            except (_Refused, psutil.Error, OSError):
                continue  # exited or reused meanwhile: nothing to stop
            info = ProcessInfo(pid=child.pid, ppid=proc.pid, name="", create_time=child.create_time())
            if self._guard.check_live(info, target.process) is not None:
                logger.info("not stopping protected descendant %d of pid %d", child.pid, proc.pid)
                target.close()
                continue
            out.append(target)
        return out

    def _terminate(self, proc: ProcessInfo, targets: Sequence[_Target]) -> EnforceResult:
        root = targets[0]
        error = _send(root, signal.SIGTERM)
        if error is not None:
            return EnforceResult(Outcome.KILL_FAILED, f"SIGTERM failed: {error}")
        signalled = [root.pid] + [t.pid for t in targets[1:] if _send(t, signal.SIGTERM) is None]
        alive = _wait(targets, self._grace)
        if not alive:
            return EnforceResult(
                Outcome.KILLED, "exited after SIGTERM" + _children_note(len(signalled) - 1), tuple(signalled)
            )
        for t in alive:
            _send(t, _SIGKILL)
        still = _wait(alive, self._kill_wait)
        if root in still:
            return EnforceResult(Outcome.KILL_FAILED, "still running after SIGKILL", tuple(signalled))
        note = _children_note(len(signalled) - 1)
        return EnforceResult(Outcome.KILLED, f"SIGKILL after {self._grace:g}s grace" + note, tuple(signalled))


def _children_note(n: int) -> str:
    return f" (with {n} descendant process{'es' if n != 1 else ''})" if n else ""


def _pin(pid: int, create_time: float) -> _Target:
    """Hold the process (pidfd on Linux), then prove it is the one the snapshot saw."""
    if create_time <= 0:
        raise _Refused(EnforceResult(Outcome.KILL_FAILED, "start time unknown, identity unverifiable"))
    pidfd = _pidfd_open(pid)
    target: _Target | None = None
    try:
        process = psutil.Process(pid)
        actual = process.create_time()
        if abs(actual - create_time) > _CREATE_TIME_TOLERANCE:
            raise _Refused(
                EnforceResult(Outcome.KILL_FAILED, "PID now belongs to another process; not signalled")
            )
        if process.status() == psutil.STATUS_ZOMBIE:
            raise _Refused(EnforceResult(Outcome.KILL_FAILED, "process exited before it was signalled"))
        target = _Target(pid, process, pidfd)
        return target
    except psutil.NoSuchProcess as exc:
        raise _Refused(EnforceResult(Outcome.KILL_FAILED, "process exited before it was signalled")) from exc
    except psutil.AccessDenied as exc:
        raise _Refused(
            EnforceResult(Outcome.KILL_FAILED, "access denied while verifying the process")
        ) from exc
    finally:
        if target is None and pidfd is not None:
            os.close(pidfd)


def _pidfd_open(pid: int) -> int | None:
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError as exc:
        raise _Refused(EnforceResult(Outcome.KILL_FAILED, "process exited before it was signalled")) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return None  # old kernel or seccomp: fall back to psutil's reuse check
        raise _Refused(EnforceResult(Outcome.KILL_FAILED, f"cannot open process: {exc.strerror}")) from exc


def _send(target: _Target, sig: int) -> str | None:
    """Deliver `sig`; None on success (or when the process is already gone), else why it failed."""
    try:
        if target.pidfd is not None:
            signal.pidfd_send_signal(target.pidfd, sig)
        else:
            target.process.send_signal(sig)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return None
    except (PermissionError, psutil.AccessDenied):
        return "permission denied"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _wait(targets: Sequence[_Target], timeout: float) -> list[_Target]:
    """Wait until every target exited or `timeout` passed; returns those still running."""
    deadline = time.monotonic() + timeout
    alive = list(targets)
    while alive:
        alive = [t for t in alive if not _exited(t)]
        left = deadline - time.monotonic()
        if not alive or left <= 0:
            break
        fds = [t.pidfd for t in alive if t.pidfd is not None]
        if len(fds) == len(alive):
            select.select(fds, [], [], left)  # a pidfd becomes readable when its process exits
        else:
            time.sleep(min(0.05, left))
    return alive


def _exited(target: _Target) -> bool:
    if target.pidfd is not None:
        readable, _, _ = select.select([target.pidfd], [], [], 0)
        return bool(readable)
    try:
        return not target.process.is_running() or target.process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


__all__ = ["BlockAction", "EnforceResult", "Enforcer", "PsutilEnforcer"]
