"""A hostile local user against the real service: the attacker runs as `nobody` (setpriv).

KILL SAFETY: every agent here runs inside a private PID namespace (tests/support/enforce_procs.py)
where the only processes are the ones the test started.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ci_skip import require
from tests.integration.test_service import Harness, policy_yaml, unique, wait_exit
from tests.support.enforce_procs import NsProcess, PidNamespace, is_dead, pid_namespaces_available
from tests.support.spawn import named_executable, shared_exe_dir

pytestmark = pytest.mark.root

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    require(
        pid_namespaces_available() or (None if shutil.which("setpriv") else "setpriv (util-linux) missing")
    )
    with PidNamespace() as ns:
        yield Harness(ns, tmp_path)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """Where `nobody` can reach the copies it runs (pytest's tmp_path is root-only)."""
    path = shared_exe_dir("ea-hostile-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(h: Harness, argv: list[str]) -> NsProcess:
    return h.ns.spawn([*AS_NOBODY, *argv])


def circuit_events(h: Harness) -> list[str]:
    return [e["type"] for e in h.agent_events() if str(e.get("type", "")).startswith("circuit")]


def test_a_users_flood_of_one_blocked_client_does_not_switch_enforcement_off(
    harness: Harness, shared_dir: Path
) -> None:
    """Six copies of `sleep` named qbittorrent, started 1.5 s apart by nobody: each is stopped,
    and the machine stays in enforce mode (also after a restart)."""
    h = harness
    h.policy.write_text(policy_yaml([("p2p-qbittorrent", "block", "qbittorrent")]))
    agent = h.start_agent(h.agent_argv(interval=0.5))
    h.wait_scans(1, agent)
    copies = []
    for i in range(6):
        directory = shared_dir / f"c{i}"
        directory.mkdir(mode=0o755)
        copies.append(as_nobody(h, [str(named_executable("qbittorrent", directory, "sleep")), "600"]))
        time.sleep(1.5)
    for copy in copies:
        assert wait_exit(copy, h) == -signal.SIGTERM
    status = h.wait_status(lambda s: s.get("stops_total", 0) >= 6)
    assert status["mode"]["mode"] == "enforce"
    assert status["circuit"]["open"] is False
    assert circuit_events(h) == []
    assert [v["username"] for v in h.violations() if v["action"] == "killed"] == ["nobody"] * 6

    agent.signal(signal.SIGTERM)
    assert wait_exit(agent, h) == 0
    again = h.start_agent(h.agent_argv(interval=0.5))
    h.wait_scans(1, again)
    late = as_nobody(h, [str(shared_dir / "c0" / "qbittorrent"), "600"])
    assert wait_exit(late, h) == -signal.SIGTERM  # still enforcing after the restart
    assert circuit_events(h) == []


def test_a_bad_policy_stopping_many_distinct_programs_opens_the_circuit(harness: Harness) -> None:
    """Six distinct installed programs (one user's): breadth, so monitor mode and a circuit_open event."""
    h = harness
    programs = {
        "sleep": ["sleep", "600"],
        "tail": ["tail", "-f", "/dev/null"],
        "perl": ["perl", "-e", "sleep 600"],
        "timeout": ["timeout", "600", "sleep", "600"],
        "dash": ["dash", "-c", "sleep 600; :"],
        "bash": ["bash", "-c", "sleep 600; :"],
    }
    lines = ["name: too-broad\nversion: 1\nmode: enforce\nrules:\n  - id: bad-rule\n    category: x\n"]
    lines.append(f"    action: block\n    process:\n      name: {sorted(programs)}\n")
    h.policy.write_text("".join(lines))
    procs = {name: as_nobody(h, argv) for name, argv in programs.items()}
    h.start_agent(h.agent_argv(interval=0.5))
    status = h.wait_status(lambda s: s.get("circuit", {}).get("open") is True)
    status = h.wait_scans(status["scans"] + 2)
    assert status["mode"]["mode"] == "monitor"
    killed = {v["process_name"] for v in h.violations() if v["action"] == "killed"}
    assert len(killed) == 5  # the sixth distinct program opened the circuit instead
    assert [name for name, p in procs.items() if p.alive()] == sorted(set(programs) - killed)
    assert circuit_events(h) == ["circuit_open"]
    [event] = [e for e in h.agent_events() if e["type"] == "circuit_open"]
    assert len(event["detail"]["targets"]) == 6 and event["detail"]["closes_at"]


def test_the_circuit_closes_after_its_window_across_a_restart(harness: Harness) -> None:
    h = harness
    h.configure(circuit_max_kills=2, circuit_window_seconds=4)
    prefix = unique("ea-p2p")
    h.policy.write_text(policy_yaml([("p2p-standin", "block", f"{prefix}-*")]))
    standins = [h.standin(f"{prefix}-{i}") for i in range(2)]  # root's programs: double weight
    agent = h.start_agent()
    h.wait_status(lambda s: s.get("circuit", {}).get("open") is True)
    agent.signal(signal.SIGKILL)
    wait_exit(agent, h)
    time.sleep(4)  # the window passes while no agent runs
    h.start_agent()
    h.wait_status(lambda s: s.get("circuit", {}).get("open") is False and s.get("scans", 0) >= 1)
    for s in standins:
        with contextlib.suppress(subprocess.TimeoutExpired):
            s.wait(10)
    assert all(is_dead(s.pid) for s in standins)  # enforcing again
    assert circuit_events(h) == ["circuit_open", "circuit_closed"]
