"""A real `endpoint-agent run` under test: its own state dir, config and policy, stopped by PID.

    with ProcessReaper() as reaper:
        agent = start_agent(workdir, POLICY, {"notify": False}, reaper=reaper)
        agent.wait_scans(1)
        agent.cpu_seconds()        # its own CPU time, children included
        agent.stop()

The agent inherits no ENDPOINT_AGENT_* variable of the caller and runs from the repository, so
it is the code under test. Whatever happens, the reaper kills it by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.support import ProcessReaper, die_with_parent

REPO = Path(__file__).resolve().parents[1]


@dataclass
class AgentUnderTest:
    popen: subprocess.Popen[bytes]
    state_dir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def wait_status(self, ok: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.popen.returncode}:\n{self.log_tail()}")
            status = self.status()
            if status and ok(status):
                return status
            time.sleep(0.05)
        raise RuntimeError(f"the agent did not get there in {timeout:g}s:\n{self.log_tail()}")

    def wait_scans(self, n: int, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_status(lambda s: s.get("pid") == self.pid and s.get("scans", 0) >= n, timeout)

    def cpu_seconds(self) -> float:
        """CPU time the service has used so far (user + system, its children included)."""
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def wait_events(self) -> None:
        """After the first scan: raise unless exec events drive the reaction (Linux, root)."""
        mode = self.wait_scans(1).get("process_events", {}).get("mode")
        if mode != "events":
            self.stop()
            raise RuntimeError(f"process events are not available here (mode {mode!r}); needs Linux and root")

    def idle_rate(self, settle: float, window: float) -> float:
        """CPU seconds per second over `window` seconds of quiet, after `settle` seconds."""
        time.sleep(settle)
        cpu0, t0 = self.cpu_seconds(), time.monotonic()
        time.sleep(window)
        return (self.cpu_seconds() - cpu0) / (time.monotonic() - t0)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def clean_env() -> dict[str, str]:
    """This machine's own ENDPOINT_AGENT_* settings must not reach the agent under test."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ENDPOINT_AGENT_")}


def start_agent(
    workdir: Path,
    policy: str,
    config: dict[str, object],
    *,
    reaper: ProcessReaper,
    name: str = "agent",
) -> AgentUnderTest:
    """`endpoint-agent run --config C --policy P --state-dir S` in `workdir/name`, tracked by `reaper`."""
    base = workdir / name
    base.mkdir(parents=True)
    policy_path = base / "policy.yaml"
    policy_path.write_text(policy)
    config_path = base / "agent.yaml"
    config = {"exec_gate": "off", **config}  # the machine's execs are gated only by bench/gate.py's own agent
    config_path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items()))
    state = base / "state"
    log = base / "agent.log"
    argv = [
        sys.executable, "-m", "endpoint_agent", "run", "--config", str(config_path),
        "--policy", str(policy_path), "--state-dir", str(state),
    ]  # fmt: skip
    with log.open("wb") as out:
        popen = reaper.track(
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=REPO,
                env=clean_env(),
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )
    return AgentUnderTest(popen, state, log)


__all__ = ["REPO", "AgentUnderTest", "clean_env", "start_agent"]
