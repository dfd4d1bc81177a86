"""Every process a test or the benchmark starts is killed and waited for, by PID.

Each spawned process leads its own session (start_new_session), so the reaper can also
reach anything it forked by signalling that one process group -- a group the reaper itself
created, never a pattern. The group is signalled only while its leader is unreaped, so
its id cannot have been reused by an unrelated process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from types import TracebackType

_LINUX = sys.platform.startswith("linux")


class ProcessReaper:
    """Tracks `subprocess.Popen` objects; `reap()` kills and waits all of them (idempotent)."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> ProcessReaper:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.reap()

    def __len__(self) -> int:
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        return list(self._procs)

    def track(self, popen: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self._procs[popen.pid] = popen
        return popen

    def reap_one(self, pid: int, timeout: float = 10.0) -> int | None:
        """Kill and wait one tracked process; returns its exit status."""
        popen = self._procs.pop(pid)
        _kill(popen)
        return _wait(popen, timeout)

    def reap(self, timeout: float = 10.0) -> None:
        """SIGKILL every tracked process (and its group), then wait for each one."""
        procs = list(self._procs.values())
        self._procs.clear()
        for popen in procs:  # signal all first, so the waits overlap
            _kill(popen)
        stuck = [popen.pid for popen in procs if _wait(popen, timeout) is None]
        if stuck:
            raise RuntimeError(f"processes did not exit after SIGKILL: {stuck}")


def _kill(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:  # still our child (alive or zombie): its pid and group are ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _wait(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that SIGKILLs the child when this process dies (Linux), even by SIGKILL.

    Built in the parent so the child only makes one prctl call between fork and exec.
    """
    if not _LINUX:
        return None
    import ctypes

    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
