"""The demo's child processes: started in their own session, tied to the demo's life, stopped by PID.

Each child leads a new session, so a Ctrl-C in the terminal reaches only the demo, which then stops
its children in order; on Linux each child also gets SIGKILL if the demo itself dies (even by
SIGKILL). Nothing here signals a process the demo did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the demo died before prctl took effect
            os._exit(1)

    return preexec


class Children:
    """Every process the demo started, stopped in reverse order by `stop_all()` (idempotent)."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        label: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: Path,
        log: Path | None = None,
        stdout: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        out: int | IO[bytes] | None = stdout if stdout is not None else subprocess.DEVNULL
        log_file = log.open("ab") if log is not None else None
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file or out,
                stderr=log_file or subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        finally:
            if log_file is not None:
                log_file.close()
        self._procs.append((label, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean stop), then SIGKILL; always reaped."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        return proc.wait(timeout)

    def stop_all(self) -> list[str]:
        stopped = []
        for label, proc in reversed(self._procs):
            if proc.poll() is None:
                self.stop(proc)
                stopped.append(f"{label} (pid {proc.pid})")
            else:
                proc.wait()
        self._procs.clear()
        return stopped


__all__ = ["Children"]
