"""A hostile local user against the real service: the attacker runs as `nobody` (setpriv).

KILL SAFETY: every agent here runs inside a private PID namespace (tests/support/enforce_procs.py)
where the only processes are the ones the test started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci_skip import require
from tests.support.enforce_procs import NsProcess, PidNamespace, is_dead, pid_namespaces_available
from tests.support.hostile import (
    AS_NOBODY,
    MB,
    MemoryCgroup,
    big_argument_script,
    memory_cgroup_available,
    rss_bytes,
)
from tests.support.service_rig import REPO, Harness, clean_env, policy_yaml, unique, wait_exit
from tests.support.spawn import named_executable, shared_exe_dir

pytestmark = pytest.mark.root


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


def as_nobody_soon(h: Harness, argv: list[str]) -> NsProcess:
    """`argv` as nobody, exec'd a moment after the test knows its PID (a running agent may stop
    it within milliseconds of the exec)."""
    return as_nobody(h, ["sh", "-c", 'sleep 0.3; exec "$0" "$@"', *argv])


def ns_run(h: Harness, argv: list[str]) -> int:
    """A short command inside the namespace (its mounts), waited for."""
    return subprocess.run([*nsenter(h), *argv], capture_output=True, timeout=60, check=False).returncode


def nsenter(h: Harness) -> list[str]:
    return ["nsenter", f"--target={h.ns.init_pid}", "--pid", "--mount", "--"]


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
        copies.append(as_nobody_soon(h, [str(named_executable("qbittorrent", directory, "sleep")), "600"]))
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
    late = as_nobody_soon(h, [str(shared_dir / "c0" / "qbittorrent"), "600"])
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
    standins = [h.standin(f"{prefix}-{i}") for i in range(3)]  # root's distinct programs: 3 targets
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


@pytest.mark.parametrize("fixed_mode", [False, True], ids=["left-0644", "made-0600-after-taken"])
def test_a_lock_held_by_another_user_cannot_stop_a_restart(
    harness: Harness, shared_dir: Path, fixed_mode: bool
) -> None:
    h = harness
    h.state = shared_dir / "state"  # reachable by nobody, as a state dir under /tmp would be
    h.state.mkdir(mode=0o755)
    lock = h.state / "agent.lock"
    lock.write_text("4242\n")
    lock.chmod(0o644)  # as older agents left it: anyone may open it, and flock works read-only
    squatter = as_nobody(h, ["flock", "--nonblock", str(lock), "sleep", "600"])
    deadline = time.monotonic() + 10
    while f":{lock.stat().st_ino} " not in Path("/proc/locks").read_text():
        assert time.monotonic() < deadline and squatter.alive(), "nobody never took the lock"
        time.sleep(0.05)
    if fixed_mode:
        lock.chmod(0o600)  # too late: nobody's descriptor keeps the lock
    h.policy.write_text(policy_yaml([("p2p-standin", "block", unique("ea-p2p"))]))
    h.start_agent()
    status = h.wait_scans(1)
    assert status["state"] == "running" and squatter.alive()
    assert lock.stat().st_mode & 0o777 == 0o600 and lock.stat().st_uid == 0
    # A 0644 file is replaced on sight; a private one held only by another user's process too.
    assert ("held by other users' processes" in h.log_text()) is fixed_mode


def test_names_cannot_forge_log_lines_or_escape_into_the_admins_terminal(
    harness: Harness, shared_dir: Path
) -> None:
    h = harness
    name = "q\x1b[2J\nFORGED"  # comm keeps all 12 bytes
    h.policy.write_text(policy_yaml([("p2p-q", "block", "q*")]))
    agent = h.start_agent()
    h.wait_scans(1, agent)
    victim = as_nobody_soon(h, [str(named_executable(name, shared_dir, "sleep")), "600"])
    assert wait_exit(victim, h) == -signal.SIGTERM
    h.wait_status(lambda s: s.get("stops_total", 0) >= 1)
    agent.signal(signal.SIGTERM)
    wait_exit(agent, h)
    log = h.log_text()
    assert "q\\x1b[2J\\nFORGED" in log and "\x1b" not in log
    assert not any(line.startswith("FORGED") for line in log.splitlines())
    [record] = h.violations()
    assert record["process_name"] == name  # the record itself is exact
    table = subprocess.run(
        [sys.executable, "-m", "endpoint_agent", "violations"],
        env=clean_env(ENDPOINT_AGENT_STATE_DIR=str(h.state)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert table.returncode == 0 and "\x1b" not in table.stdout
    assert len(table.stdout.splitlines()) == 3 and "q\\x1b[2J\\nFORGED" in table.stdout


def test_a_full_disk_holds_few_events_in_memory_and_counts_the_dropped(harness: Harness) -> None:
    """The state dir on a small tmpfs in the namespace's private mounts, filled while the agent runs."""
    h = harness
    h.state.mkdir()
    assert ns_run(h, ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(h.state)]) == 0
    state = h.state
    argv = h.agent_argv()  # the agent's own view of the state dir: on the tmpfs
    h.state = Path(f"/proc/{h.ns.init_pid}/root{state}")  # the test reads it through the namespace
    h.configure(store_max_unsaved_events=3, store_min_free_bytes=0)
    prefix = unique("ea-seen")
    h.policy.write_text(policy_yaml([("seen-standin", "report", f"{prefix}-*")]))
    agent = h.start_agent(argv)
    h.wait_scans(2, agent)
    assert ns_run(h, ["dd", "if=/dev/zero", f"of={state}/filler", "bs=4k"]) != 0  # stopped: disk full
    standins = [h.standin(f"{prefix}-{i}") for i in range(6)]
    deadline = time.monotonic() + 30
    while "oldest unsaved event" not in h.log_text():
        assert time.monotonic() < deadline, h.log_text()
        time.sleep(0.1)
    assert all(s.alive() for s in standins)
    assert ns_run(h, ["rm", f"{state}/filler"]) == 0
    status = h.wait_status(
        lambda s: s.get("unsaved_events") == 0 and (s.get("queue") or {}).get("dropped", 0) > 0
    )
    listing = subprocess.run(  # as an admin would, inside the namespace (where the tmpfs is)
        [*nsenter(h), sys.executable, "-m", "endpoint_agent", "violations", "--json"],
        env=clean_env(ENDPOINT_AGENT_STATE_DIR=str(state)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert listing.returncode == 0, listing.stderr
    recorded = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {v["rule_id"] for v in recorded} == {"seen-standin"}
    assert status["queue"]["dropped"] + len(recorded) == 6  # every violation stored or counted
    assert len(recorded) <= 3 + 1  # at most the bound (and one a tick may have written before the fill)


def test_megabytes_of_arguments_do_not_grow_the_agent(harness: Harness) -> None:
    """150 processes of nobody with 15 arguments of 128 KiB each: the agent's RSS moves by <= 10 MB,
    and, held to its unit's MemoryMax (256M) in a memory cgroup, it never reaches it."""
    h = harness
    require(memory_cgroup_available())
    h.policy.write_text(policy_yaml([("p2p-standin", "block", unique("ea-p2p"))]))
    with MemoryCgroup(256 * MB) as cgroup:
        agent = h.start_agent(cgroup.wrap(h.agent_argv(interval=0.5)))
        status = h.wait_scans(6)
        before, processes = rss_bytes(agent.pid), status["last_scan"]["processes"]
        as_nobody(h, big_argument_script(150, 15))
        status = h.wait_status(lambda s: s["last_scan"]["processes"] >= processes + 150, timeout=60)
        h.wait_scans(status["scans"] + 4)
        grown = rss_bytes(agent.pid) - before
        assert grown <= 10 * MB, f"RSS grew by {grown / MB:.1f} MB"
        assert not cgroup.limit_reached() and cgroup.peak() < cgroup.limit


def test_forty_huge_executables_do_not_hold_up_the_stop_of_a_blocked_client(
    harness: Harness, shared_dir: Path
) -> None:
    """nobody runs 40 sparse 500 MiB executables, then a blocked client, under a policy with a sha256
    rule (so hashing is on): the client is stopped while the big files still wait in the hash queue."""
    h = harness
    client = unique("ea-p2p")
    h.policy.write_text(
        policy_yaml([("p2p-standin", "block", client)])
        + "  - id: known-bad-binary\n    category: malware\n    action: block\n"
        + f'    process:\n      sha256: ["{"ab" * 32}"]\n'
    )
    agent = h.start_agent(h.agent_argv(interval=1))
    status = h.wait_scans(2, agent)
    assert status["hashing"]["wanted"] is True
    for i in range(40):  # distinct files (inodes), each a copy of sleep made 500 MiB, sparse
        directory = shared_dir / f"h{i}"
        directory.mkdir(mode=0o755)
        os.truncate(named_executable("huge", directory, "sleep"), 500 * MB)  # still runs
    launcher = " ".join(f"{shared_dir}/h{i}/huge 600 &" for i in range(40))
    as_nobody(h, ["sh", "-c", f"{launcher} wait"])
    h.wait_status(lambda s: s["hashing"]["queued_total"] >= 30, timeout=60)
    victim = as_nobody_soon(h, [str(named_executable(client, shared_dir, "sleep")), "600"])
    assert wait_exit(victim, h) == -signal.SIGTERM
    status = h.wait_scans(h.status()["scans"] + 1, agent)
    assert status["hashing"]["queued"] >= 20  # stopped long before the big files' turn came
