"""`endpoint-agent run` as a subprocess in a private PID namespace, and what a test reads of it.

KILL SAFETY: the agent runs inside a PID namespace (tests/support/enforce_procs.py) where the only
processes are the ones the test started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from endpoint_agent.report.store import ViolationStore
from tests.support.enforce_procs import NsProcess, PidNamespace, python_env, python_sleeper

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The test machine's own ENDPOINT_AGENT_* settings must not leak into the agent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENDPOINT_AGENT_")}
    env.update(extra)
    return env


def policy_yaml(rules: list[tuple[str, str, str]], *, mode: str = "enforce", version: int = 1) -> str:
    """rules: (rule_id, action, process name glob)."""
    lines = [f"name: service-test\nversion: {version}\nmode: {mode}\nrules:"]
    for rule_id, action, name in rules:
        lines.append(
            f"  - id: {rule_id}\n    category: p2p\n    action: {action}\n"
            f'    message: "Peer-to-peer clients are not allowed."\n'
            f'    process:\n      name: ["{name}"]'
        )
    return "\n".join(lines) + "\n"


class Harness:
    def __init__(self, ns: PidNamespace, tmp: Path) -> None:
        self.ns = ns
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.state = tmp / "state"
        self.policy = tmp / "policy.yaml"
        self.config = tmp / "agent.yaml"
        self.break_glass = tmp / "break-glass"
        self.logs: list[Path] = []
        self.configure()

    def configure(self, **extra: object) -> None:
        settings: dict[str, object] = {
            "notify": False,  # no desktop here; the log line is still written
            "break_glass_file": str(self.break_glass),
            "kill_grace_seconds": 2,
            "exec_gate": "off",  # these tests are about the post-exec path (the gate has its own)
            **extra,
        }
        self.config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))

    def standin(self, name: str, *args: str) -> NsProcess:
        return self.ns.spawn(python_sleeper(name, self.bin, *args), env=python_env())

    def agent_argv(self, interval: float = 0.25) -> list[str]:
        return [
            sys.executable, "-m", "endpoint_agent", "run", "--config", str(self.config), "--policy",
            str(self.policy), "--state-dir", str(self.state), "--scan-interval", str(interval),
        ]  # fmt: skip

    def start_agent(self, argv: list[str] | None = None) -> NsProcess:
        log = self.tmp / f"agent-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return self.ns.spawn(
                argv or self.agent_argv(), env=clean_env(), stdout=out, stderr=out, cwd=str(REPO)
            )

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_status(self, ok: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and ok(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"status never matched; last: {self.status()}\n{self.log_text()}")

    def wait_scans(self, n: int, agent: NsProcess | None = None) -> dict[str, Any]:
        return self.wait_status(
            lambda s: s.get("scans", 0) >= n and (agent is None or s["pid"] == self.ns_pid(agent))
        )

    def ns_pid(self, proc: NsProcess) -> int:
        """A process's PID as seen inside the namespace (what the agent records)."""
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        raise AssertionError("no NSpid line")

    def violations(self) -> list[dict[str, Any]]:
        """As an administrator would: ENDPOINT_AGENT_STATE_DIR=DIR endpoint-agent violations --json."""
        done = subprocess.run(
            [sys.executable, "-m", "endpoint_agent", "violations", "--json"],
            env=clean_env(ENDPOINT_AGENT_STATE_DIR=str(self.state)),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def agent_events(self) -> list[dict[str, Any]]:
        store = ViolationStore.open_existing(self.state / "violations.sqlite3")
        assert store is not None
        with store:
            return [e.payload for e in store.events(kind="agent")]

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_exit(proc: NsProcess, h: Harness, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {proc.pid} still running\n{h.log_text()}") from None
