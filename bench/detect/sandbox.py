"""A network namespace that has nothing but loopback, and the processes started inside it.

Every peer-to-peer client, tracker and benign workload of the detection cases runs in one of
these: the namespace is created by a holder process (`unshare --net sleep`), `lo` is brought
up, and the namespace is checked to hold no other interface before anything runs in it --
traffic there cannot leave the machine. Processes enter it with `nsenter --net=`, which execs
the program (the Popen PID is the program's PID). Everything is tracked by a ProcessReaper and
killed by PID (and its own process group) on close; the namespace disappears with its last
process, so nothing is left to delete.

Needs root, util-linux (unshare, nsenter) and iproute2 (ip).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.support import ProcessReaper, die_with_parent

REQUIRED_TOOLS = ("unshare", "nsenter", "ip")


class SandboxError(RuntimeError):
    pass


def missing_requirements() -> str | None:
    """Why a loopback namespace cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


class LoopbackNamespace:
    """Context manager: a fresh network namespace with only `lo`, and a way to run programs in it."""

    def __init__(self) -> None:
        self.reaper = ProcessReaper()
        self._holder: subprocess.Popen[bytes] | None = None
        self.netns_id = ""

    def __enter__(self) -> LoopbackNamespace:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def holder_pid(self) -> int:
        if self._holder is None:
            raise SandboxError("namespace not started")
        return self._holder.pid

    @property
    def ns_path(self) -> str:
        return f"/proc/{self.holder_pid}/ns/net"

    def _start(self) -> None:
        reason = missing_requirements()
        if reason:
            raise SandboxError(reason)
        self._holder = self.reaper.track(
            subprocess.Popen(
                ["unshare", "--net", "--", "sleep", "infinity"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )
        host_ns = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while True:  # unshare execs sleep once the namespace exists
            try:
                ns = os.readlink(self.ns_path)
            except OSError:
                ns = host_ns
            if ns != host_ns:
                break
            if self._holder.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(f"unshare --net failed: {self._stderr(self._holder)}")
            time.sleep(0.01)
        self.netns_id = ns
        self.run(["ip", "link", "set", "lo", "up"])
        links = [link["ifname"] for link in json.loads(self.run(["ip", "-j", "link", "show"]))]
        if links != ["lo"]:
            raise SandboxError(f"namespace {ns} is not loopback-only: {links}")

    def _enter(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.ns_path}", "--", *argv]

    def run(self, argv: Sequence[str], timeout: float = 30) -> str:
        """Run a short command inside the namespace; its stdout, or SandboxError."""
        done = subprocess.run(self._enter(argv), capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise SandboxError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode()

    def popen(
        self,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdout_pipe: bool = False,
        stdin_pipe: bool = False,
        inside: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running program inside the namespace, tracked by the reaper.

        Output goes to `log` (or nowhere); `stdout_pipe` gives the caller its stdout instead;
        `stdin_pipe` lets the caller type into it (an interactive client's commands).
        `inside=False` starts it in the host namespace instead (still reaped with the rest).
        """
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed right below
        try:
            popen = subprocess.Popen(
                self._enter(argv) if inside else list(argv),
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        finally:
            if not isinstance(out, int):
                out.close()
        return self.reaper.track(popen)

    def close(self) -> None:
        """Kill and wait every process started in the namespace; the namespace goes with the last one.

        Then kill, by PID, whatever is still inside it: programs that left their process group
        (sshd's per-connection children call setsid). Only our own programs can be in a namespace
        we created, and each PID is pinned with a pidfd and checked to be in it before the signal.
        """
        try:
            self.reaper.reap()
        finally:
            if self.netns_id:
                self._kill_stragglers()

    def _kill_stragglers(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (left := self._members()) and time.monotonic() < deadline:
            for pid in left:
                _kill_if_in(pid, self.netns_id)
            time.sleep(0.05)

    def _members(self) -> list[int]:
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.readlink(f"/proc/{name}/ns/net") == self.netns_id:
                        pids.append(int(name))
                except OSError:
                    continue
        return pids

    @staticmethod
    def _stderr(popen: subprocess.Popen[bytes]) -> str:
        if popen.stderr is None:
            return ""
        if popen.poll() is None:
            return "(still running)"
        return popen.stderr.read().decode(errors="replace").strip()


def _kill_if_in(pid: int, netns_id: str) -> None:
    """SIGKILL `pid` if it is (still) in `netns_id`; the pidfd keeps a reused PID from being hit."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone
    try:
        if os.readlink(f"/proc/{pid}/ns/net") == netns_id:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass  # exited meanwhile (zombies have no namespace links)
    finally:
        os.close(fd)


class LineReader:
    """Lines of a child's stdout, with a deadline (the child may hang or die)."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str) -> None:
        if popen.stdout is None:
            raise ValueError(f"{name}: started without stdout_pipe")
        self._popen, self._name, self._fd = popen, name, popen.stdout.fileno()
        self._buffer = b""
        self.lines: list[str] = []  # everything read so far, for the record

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise TimeoutError(f"{self._name} (pid {self._popen.pid}) said nothing for {timeout:.0f} s")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise SandboxError(f"{self._name} (pid {self._popen.pid}) exited ({self._popen.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line = raw.decode(errors="replace")
        self.lines.append(line)
        return line

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.01, deadline - time.monotonic()))
            if predicate(line):
                return line
