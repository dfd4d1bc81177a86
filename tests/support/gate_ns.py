"""A gate in a private mount namespace, driven line by line from a test or the benchmark.

    with GateNamespace(policy_yaml, enforce=True) as ns:     # unshare --mount --propagation private
        ns.wait_ready()
        ns.run(["/tmp/x/blocked-tool"])      # {"rc": ..., "errno": 1 when denied, "seconds": ...}
        ns.status()                          # the supervisor's status (gate stats included)

The helper process (`python -m tests.support.gate_ns`) runs inside the new namespace: the real
`GateSupervisor`, the real gate process, real fanotify mount marks -- on that namespace's copies
of the mounts only, so nothing outside it is ever gated. Commands are JSON lines on its stdin,
answers JSON lines on its stdout. Reports and agent events the supervisor hands over are kept
in the helper and returned by `reports()` / `events()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def unavailable() -> str | None:
    """Why a gate namespace cannot be made here (None: it can)."""
    if not sys.platform.startswith("linux"):
        return "the exec gate is Linux only"
    if os.geteuid() != 0:
        return "the exec gate needs root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    from endpoint_agent.gate.service import unavailable_reason

    return unavailable_reason()


class GateNamespace:
    def __init__(
        self,
        policy_yaml: str,
        *,
        enforce: bool = True,
        env: Mapping[str, str] | None = None,
        mounts_of_pid: int | None = None,
    ) -> None:
        self._policy_yaml = policy_yaml
        self._enforce = enforce
        self._mounts_of_pid = mounts_of_pid
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> GateNamespace:
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", "tests.support.gate_ns"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=self._env,
        )
        self.call("start", policy=self._policy_yaml, enforce=self._enforce, mounts_of_pid=self._mounts_of_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(Exception):
            self.call("quit", timeout=15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        with self._lock:
            proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"gate namespace helper ended (status {proc.poll()}) during {op!r}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"gate namespace helper: {answer['error']}")
        return answer["result"]

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_state("on", timeout)

    def wait_state(self, state: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.call("status")
            if status["state"] == state:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"gate never reached state {state!r}: {status}")
            time.sleep(0.1)

    def run(self, argv: list[str], timeout: float = 30.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("run", argv=argv, timeout=timeout)
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def reports(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("reports")
        return result

    def events(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("events")
        return result


def shell_loops(program: str, count: int, loops: int = 1) -> dict[str, float]:
    """Run `loops` parallel `bash` loops of `count` execs of `program`; wall seconds and their CPU."""
    import resource

    script = f'i=0; while [ "$i" -lt {int(count)} ]; do {program}; i=$((i + 1)); done'
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    procs = [subprocess.Popen(["bash", "-c", script]) for _ in range(loops)]
    for proc in procs:
        proc.wait()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall": wall, "cpu": cpu, "execs": float(count * loops)}


# -- the helper, inside the namespace ---------------------------------------------------------------


class _Helper:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.config: Any = None
        self.supervisor: Any = None

    def start(self, policy: str, enforce: bool, mounts_of_pid: int | None = None) -> dict[str, Any]:
        from endpoint_agent.gate.protocol import GateConfig
        from endpoint_agent.gate.supervisor import GateSupervisor
        from endpoint_agent.policy import parse_policy

        parsed = parse_policy(policy, "test policy")
        self.config = GateConfig(
            policy=parsed.model_dump(mode="json"),
            agent_pid=os.getpid(),
            enforce=enforce,
            mode_reason="test",
            mounts_of_pid=mounts_of_pid,
        )
        self.supervisor = GateSupervisor(
            lambda: self.config,
            on_report=lambda r: self.reports.append(asdict(r)),
            on_event=lambda t, d: self.events.append({"type": t, "detail": dict(d)}),
        )
        self.supervisor.start()
        return {"pid": os.getpid()}

    def mode(self, enforce: bool, reason: str) -> None:
        self.config = replace(self.config, enforce=enforce, mode_reason=reason)

    def policy(self, policy: str) -> None:
        from endpoint_agent.policy import parse_policy

        parsed = parse_policy(policy, "test policy")
        self.config = replace(self.config, policy=parsed.model_dump(mode="json"))

    def run(self, argv: list[str], timeout: float = 30.0) -> dict[str, Any]:
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except PermissionError as exc:
            return {"rc": None, "errno": exc.errno, "seconds": time.monotonic() - started}
        except OSError as exc:
            return {"rc": None, "errno": exc.errno, "error": str(exc), "seconds": time.monotonic() - started}
        return {
            "rc": done.returncode,
            "errno": None,
            "seconds": time.monotonic() - started,
            "stderr": done.stderr.decode(errors="replace")[-500:],
        }

    def signal_gate(self, sig: int) -> int | None:
        pid = self.supervisor.pid
        if pid is not None:
            os.kill(pid, sig)
        return pid

    def mount_tmpfs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "gatetest", path], check=True)

    def loop(self, program: str, count: int, loops: int = 1) -> dict[str, float]:
        """`loops` shell loops running `program` `count` times each, in parallel: wall and CPU seconds."""
        return shell_loops(program, count, loops)

    def cpu(self) -> float:
        """CPU seconds of the gate's side of the agent: this supervisor and the gate process."""
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        total = usage.ru_utime + usage.ru_stime
        pid = self.supervisor.pid if self.supervisor is not None else None
        if pid is not None:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def copy(self, src: str, dst: str) -> None:
        shutil.copy2(src, dst)

    def quit(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()


def _main() -> int:
    helper = _Helper()
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            op = msg.pop("op")
            if op == "status":
                result: Any = helper.supervisor.status()
            elif op == "reports":
                result = helper.reports
            elif op == "events":
                result = helper.events
            else:
                result = getattr(helper, op)(**msg)
            sys.stdout.write(json.dumps({"result": result}, default=str) + "\n")
        except Exception as exc:  # one line back to the test, whatever happened
            sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            op = ""
        sys.stdout.flush()
        if op == "quit":
            break
    if helper.supervisor is not None:
        helper.supervisor.stop()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(_main())
