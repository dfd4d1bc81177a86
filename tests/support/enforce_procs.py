"""A private PID namespace for tests that let the agent kill: it sees only what the test started.

    with PidNamespace() as ns:                       # root + util-linux (unshare, nsenter)
        standin = ns.spawn(python_sleeper("ea-p2p-x", tmp_path))
        agent = ns.spawn([sys.executable, "-m", "endpoint_agent", "run", ...])
        standin.outer.wait(timeout=20)               # the agent stopped it

`unshare --pid --fork --mount-proc --kill-child` starts a tiny init (PID 1 inside, it reaps
orphans) in a new PID namespace with its own /proc; `nsenter` starts more processes inside it.
Closing the namespace kills its init by PID, and the kernel then kills everything inside, so
nothing a test started there can outlive it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from endpoint_agent.types import ProcessInfo
from tests.support.reaper import die_with_parent
from tests.support.spawn import named_executable

_INIT = """
import os, signal, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""

# A stand-in that just stays alive; optionally ignoring SIGTERM (a client that must be SIGKILLed).
SLEEPER = (
    "import signal, sys, time\n"
    "if 'stubborn' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def pid_namespaces_available() -> str | None:
    """None when PID-namespace tests can run here, else the reason they cannot."""
    if not sys.platform.startswith("linux"):
        return "PID namespaces are Linux-only"
    if os.geteuid() != 0:
        return "needs root (unshare --pid)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) not installed"
    return None


def python_env() -> dict[str, str]:
    """Environment for a renamed copy of the interpreter (it cannot find its stdlib by itself)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env["PYTHONHOME"] = f"{sys.base_prefix}:{sys.base_exec_prefix}"
    return env


def python_sleeper(name: str, directory: Path, *args: str) -> list[str]:
    """argv of a process named `name` (a hard copy of python) that prints "ready" and sleeps;
    with the argument 'stubborn' it ignores SIGTERM."""
    exe = named_executable(name, directory, "python")
    return [str(exe), "-S", "-s", "-c", SLEEPER, *args]


def process_info(pid: int) -> ProcessInfo:
    """What a snapshot would record about `pid`, read now."""
    p = psutil.Process(pid)
    with p.oneshot():
        return ProcessInfo(
            pid=pid,
            ppid=p.ppid(),
            name=p.name(),
            exe=p.exe() or None,
            cmdline=tuple(p.cmdline()),
            username=p.username(),
            uid=p.uids().real,
            create_time=p.create_time(),
        )


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_dead(pid):
            return True
        time.sleep(0.02)
    return is_dead(pid)


@dataclass
class NsProcess:
    """A process inside the namespace: `outer` is the nsenter wrapper, `pid` the process itself
    as the test (outside the namespace) sees it; signal `pid`, wait on `outer`."""

    outer: subprocess.Popen[bytes]
    pid: int

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def signal(self, sig: int) -> None:
        # `pid` is our own grandchild and nsenter has not reaped it while `outer` runs.
        if self.outer.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.outer.wait(timeout)


class PidNamespace:
    def __init__(self) -> None:
        self._unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-S", "-c", _INIT],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._spawned: list[NsProcess] = []
        self._gate_dir = Path(tempfile.mkdtemp(prefix="ea-ns-gates-"))
        try:
            self.init_pid = _child_of(self._unshare, timeout=10)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PidNamespace:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
        stderr: int | None = subprocess.DEVNULL,
        cwd: str | None = None,
    ) -> NsProcess:
        # The program starts only once its PID is known here: a running agent may stop it within
        # milliseconds of its exec, before a poll for nsenter's child could see it (`_gated`).
        gate = self._gate_dir / f"gate-{len(self._spawned)}"
        os.mkfifo(gate)
        outer = subprocess.Popen(
            ["nsenter", f"--target={self.init_pid}", "--pid", "--mount", "--", *_gated(gate, argv)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            preexec_fn=die_with_parent(),
        )
        try:
            proc = NsProcess(outer, _child_of(outer, timeout=10))
        except BaseException:
            _open_gate(gate, None)
            raise
        _open_gate(gate, proc)
        self._spawned.append(proc)
        _wait_exec(proc.pid, argv[0])
        return proc

    def close(self) -> None:
        # Killing the init (PID 1 inside) makes the kernel kill every process in the namespace.
        with contextlib.suppress(ProcessLookupError, AttributeError):
            if self._unshare.poll() is None and getattr(self, "init_pid", None):
                os.kill(self.init_pid, signal.SIGKILL)
        if self._unshare.poll() is None:
            self._unshare.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._unshare.wait(10)
        for proc in self._spawned:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.outer.wait(10)
        shutil.rmtree(self._gate_dir, ignore_errors=True)


_GATE = 'read _ < "$0"; exec "$@"'


def _gated(gate: Path, argv: Sequence[str]) -> list[str]:
    """`argv`, exec'd by a shell once `gate` (a FIFO) is opened and written to."""
    return ["sh", "-c", _GATE, str(gate), *argv]


def _open_gate(gate: Path, proc: NsProcess | None, timeout: float = 10.0) -> None:
    """Let the gated shell go: it may not have opened the FIFO yet (retry), or be gone (give up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has it open
        except OSError:
            if proc is None or proc.outer.poll() is not None or time.monotonic() > deadline:
                return
            time.sleep(0.001)
            continue
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)
        return


def _wait_exec(pid: int, program: str, timeout: float = 10.0) -> None:
    """Until the gate's shell has exec'd `program` (or is gone), so callers see the program itself."""
    name = os.path.basename(program)[:15]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if comm == name or not cmdline.startswith(b"sh\0-c\0" + _GATE.encode()):
            return
        time.sleep(0.002)


def _child_of(popen: subprocess.Popen[bytes], timeout: float) -> int:
    """The PID of the one child `popen` forks (unshare and nsenter each fork once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{popen.args!r} exited with {popen.returncode} before starting its child")
        try:
            children = psutil.Process(popen.pid).children()
        except psutil.NoSuchProcess:
            children = []
        if children:
            return children[0].pid
        time.sleep(0.01)
    raise TimeoutError(f"{popen.args!r} did not start its child in time")


__all__ = [
    "SLEEPER",
    "NsProcess",
    "PidNamespace",
    "is_dead",
    "pid_namespaces_available",
    "process_info",
    "python_env",
    "python_sleeper",
    "wait_dead",
]
