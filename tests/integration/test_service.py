"""`endpoint-agent run` as a real subprocess, enforcing on real stand-in processes.

KILL SAFETY: every agent here runs inside a private PID namespace (tests/support/enforce_procs.py)
where the only processes are the ones the test started; even a rule blocking `python*` can reach
nothing else on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.policy import parse_policy
from endpoint_agent.report.store import ViolationStore
from endpoint_contract.envelope import load_private_key, sign_policy
from tests.support.enforce_procs import (
    NsProcess,
    PidNamespace,
    is_dead,
    pid_namespaces_available,
    python_env,
    python_sleeper,
)
from tests.support.server import make_keys

_why_not = pid_namespaces_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The test machine's own ENDPOINT_AGENT_* settings must not leak into the agent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENDPOINT_AGENT_")}
    env.update(extra)
    return env


def policy_yaml(rules: list[tuple[str, str, str]], *, mode: str = "enforce", version: int = 1) -> str:
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


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with PidNamespace() as ns:
        yield Harness(ns, tmp_path)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_exit(proc: NsProcess, h: Harness, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {proc.pid} still running\n{h.log_text()}") from None


def test_stops_the_standin_records_once_and_survives_kill_9(harness: Harness) -> None:
    h = harness
    blocked, seen = unique("ea-p2p"), unique("ea-seen")
    h.policy.write_text(policy_yaml([("p2p-standin", "block", blocked), ("seen-standin", "report", seen)]))
    victim, watched = h.standin(blocked), h.standin(seen)

    agent = h.start_agent(h.agent_argv(interval=1))
    assert wait_exit(victim, h) == -signal.SIGTERM  # stopped by the first scan, with SIGTERM
    h.wait_scans(3, agent)
    records = h.violations()
    # one record per violation, not one per scan
    assert sorted((v["rule_id"], v["action"]) for v in records) == [
        ("p2p-standin", "killed"),
        ("seen-standin", "reported"),
    ]
    killed = next(v for v in records if v["action"] == "killed")
    assert (
        killed["process_name"] == blocked and killed["policy_version"] == 1 and killed["username"] == "root"
    )
    assert "Peer-to-peer clients are not allowed." in h.log_text()  # the user message, as a local log line

    agent.signal(signal.SIGKILL)
    assert wait_exit(agent, h) == -signal.SIGKILL
    again = h.start_agent(h.agent_argv(interval=1))
    h.wait_scans(2, again)
    after = h.violations()
    assert [v["event_id"] for v in after] == [
        v["event_id"] for v in records
    ]  # nothing lost, nothing repeated
    assert not is_dead(watched.pid)

    again.signal(signal.SIGTERM)
    assert wait_exit(again, h) == 0
    assert h.status()["state"] == "stopped"
    assert "stopped cleanly" in h.log_text()


def test_a_rule_blocking_python_never_hits_the_agent_or_its_ancestors(harness: Harness) -> None:
    h = harness
    h.policy.write_text(policy_yaml([("all-python", "block", "python*")]))
    sibling = h.standin(unique("python3-standin"))
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    parent = h.start_agent([sys.executable, "-c", launcher, *h.agent_argv()])
    assert wait_exit(sibling, h) == -signal.SIGTERM
    h.wait_scans(3)
    assert not is_dead(parent.pid)
    status = h.status()
    assert status["mode"]["mode"] == "enforce" and status["stops_total"] == 1
    records = {v["pid"]: v for v in h.violations()}
    agent_pid = status["pid"]
    parent_pid = h.ns_pid(parent)
    assert records[agent_pid]["action"] == "protected"
    assert records[agent_pid]["detail"] == "protected: the agent itself"
    assert records[parent_pid]["detail"] == "protected: an ancestor of the agent"
    assert records[1]["detail"] == "protected: PID 1"  # the namespace's init is python too
    assert [v["action"] for v in records.values()].count("killed") == 1


def test_monitor_mode_signals_nothing(harness: Harness) -> None:
    h = harness
    name = unique("ea-p2p")
    h.policy.write_text(policy_yaml([("p2p-standin", "block", name)], mode="monitor"))
    standin = h.standin(name)
    h.start_agent()
    h.wait_scans(3)
    assert not is_dead(standin.pid)
    assert [v["action"] for v in h.violations()] == ["would_block"]
    assert h.status()["mode"] == {"mode": "monitor", "reason": "policy mode is monitor"}


def test_an_envelope_nobody_could_verify_is_report_only(harness: Harness, tmp_path: Path) -> None:
    """`run --policy envelope.json` without a trusted key says "report only" and does just that."""
    h = harness
    name = unique("ea-p2p")
    private_key, _ = make_keys(tmp_path / "keys")
    policy = parse_policy(policy_yaml([("p2p-standin", "block", name)]), "test")
    h.policy = tmp_path / "policy.envelope.json"
    h.policy.write_bytes(sign_policy(policy, [load_private_key(private_key)], "default"))
    standin = h.standin(name)
    h.start_agent()
    status = h.wait_scans(3)
    assert not is_dead(standin.pid), h.log_text()
    assert [v["action"] for v in h.violations()] == ["would_block"]
    assert status["mode"]["mode"] == "monitor" and "signature not verified" in status["mode"]["reason"]
    assert status["policy"]["monitor_reason"] == status["mode"]["reason"]
    assert "signature NOT verified" in h.log_text()


def test_break_glass_forces_monitor_mode_while_it_exists(harness: Harness) -> None:
    h = harness
    name = unique("ea-p2p")
    h.policy.write_text(policy_yaml([("p2p-standin", "block", name)]))
    h.break_glass.write_text("incident 4711\n")
    standin = h.standin(name)
    h.start_agent()
    status = h.wait_scans(3)
    assert not is_dead(standin.pid)
    assert status["mode"] == {"mode": "monitor", "reason": "break-glass file present"}
    assert status["break_glass"]["active"] is True
    h.break_glass.unlink()
    assert wait_exit(standin, h) == -signal.SIGTERM
    assert [v["action"] for v in h.violations()] == ["would_block", "killed"]


def test_circuit_breaker_trips_past_its_threshold_and_the_agent_keeps_running(harness: Harness) -> None:
    h = harness
    h.configure(circuit_max_kills=3)  # distinct programs (enforce/circuit.py)
    prefix = unique("ea-p2p")
    h.policy.write_text(policy_yaml([("p2p-standin", "block", f"{prefix}-*")]))
    standins = [h.standin(f"{prefix}-{i}") for i in range(5)]
    h.start_agent()
    status = h.wait_status(lambda s: s.get("circuit", {}).get("open") is True)
    scans = status["scans"]
    status = h.wait_scans(scans + 2)  # still scanning, in monitor mode
    assert status["mode"]["mode"] == "monitor"
    assert status["stops_total"] == 3
    assert sum(is_dead(s.pid) for s in standins) == 3
    actions = [v["action"] for v in h.violations()]
    assert (actions.count("killed"), actions.count("would_block")) == (3, 2)
    [event] = h.agent_events()
    assert event["type"] == "circuit_open" and event["policy_version"] == 1 and event["kind"] == "agent"
    assert event["detail"]["breadth"] == 4 and len(event["detail"]["targets"]) == 4


def test_one_instance_per_state_dir_and_clear_start_errors(harness: Harness) -> None:
    h = harness
    h.policy.write_text(policy_yaml([("p2p-standin", "block", unique("ea-p2p"))]))
    h.start_agent()
    h.wait_scans(1)

    def run(argv: list[str]) -> tuple[int, str]:
        proc = h.ns.spawn(
            argv, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(REPO)
        )
        _, err = proc.outer.communicate(timeout=60)
        return proc.outer.returncode, err.decode()

    code, err = run(h.agent_argv())
    assert code == 2
    assert "another agent is already running" in err
    assert "Traceback" not in err

    missing = h.tmp / "missing.yaml"
    code, err = run(
        [
            sys.executable,
            "-m",
            "endpoint_agent",
            "run",
            "--policy",
            str(missing),
            "--state-dir",
            str(h.tmp / "b"),
        ]
    )
    assert code == 2
    assert f"invalid setting policy: {missing}" in err and "Traceback" not in err

    broken = h.tmp / "broken.yaml"
    broken.write_text(
        "name: broken\nversion: 1\nrules:\n  - id: x\n    action: explode\n    process: {name: a}\n"
    )
    code, err = run(
        [
            sys.executable,
            "-m",
            "endpoint_agent",
            "run",
            "--policy",
            str(broken),
            "--state-dir",
            str(h.tmp / "c"),
        ]
    )
    assert code == 2
    assert str(broken) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_one_shot_scan_enforce_has_the_same_rails(harness: Harness) -> None:
    h = harness
    h.policy.write_text(policy_yaml([("all-python", "block", "python*")]))
    sibling = h.standin(unique("python3-standin"))
    scan = h.ns.spawn(
        [sys.executable, "-m", "endpoint_agent", "scan", "--policy", str(h.policy), "--enforce", "--json"],
        env=clean_env(ENDPOINT_AGENT_CONFIG=str(h.config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
    )
    out, err = scan.outer.communicate(timeout=60)
    assert scan.outer.returncode == 1, err.decode()  # findings
    assert wait_exit(sibling, h) == -signal.SIGTERM
    records = [json.loads(line) for line in out.decode().splitlines()]
    by_action = sorted((r["action"], r.get("detail", "")) for r in records)
    assert by_action == [
        ("killed", "exited after SIGTERM"),
        ("protected", "protected: PID 1"),
        ("protected", "protected: the agent itself"),
    ]


def test_event_log_holds_each_recorded_violation_as_ocsf(harness: Harness) -> None:
    """`run --event-log FILE`: the machine without a server still keeps a SIEM-readable record."""
    h = harness
    blocked = unique("ea-p2p")
    h.policy.write_text(policy_yaml([("p2p-standin", "block", blocked)]))
    event_log = h.tmp / "log" / "violations.ocsf.jsonl"
    victim = h.standin(blocked)
    agent = h.start_agent([*h.agent_argv(interval=1), "--event-log", str(event_log)])
    assert wait_exit(victim, h) == -signal.SIGTERM
    deadline = time.monotonic() + 30
    while not (event_log.exists() and event_log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert len(lines) == 1, lines
    finding = lines[0]
    assert finding["class_uid"] == 2004 and finding["finding_info"]["title"] == "p2p-standin"
    assert finding["evidences"][0]["process"]["name"] == blocked
    assert finding["disposition_id"] == 2 and finding["unmapped"]["action"] == "killed"
    assert finding["finding_info"]["uid"] == h.violations()[0]["event_id"]
    assert (event_log.stat().st_mode & 0o777) == 0o600
    agent.signal(signal.SIGTERM)
    assert wait_exit(agent, h) == 0
