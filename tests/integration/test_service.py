"""`endpoint-agent run` as a real subprocess, enforcing on real stand-in processes.

KILL SAFETY: every agent here runs inside a private PID namespace (tests/support/enforce_procs.py)
where the only processes are the ones the test started; even a rule blocking `python*` can reach
nothing else on the machine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint_agent.policy import parse_policy
from endpoint_contract.envelope import load_private_key, sign_policy
from tests.support.enforce_procs import (
    PidNamespace,
    is_dead,
    pid_namespaces_available,
)
from tests.support.server import make_keys
from tests.support.service_rig import REPO, Harness, clean_env, policy_yaml, unique, wait_exit

_why_not = pid_namespaces_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with PidNamespace() as ns:
        yield Harness(ns, tmp_path)


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
