"""PsutilEnforcer on real processes this test started (each target is passed explicitly by PID)."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from endpoint_agent.enforce import terminate
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.enforce.terminate import PsutilEnforcer
from endpoint_agent.types import Outcome
from tests.support import ProcessReaper, SpawnedProcess, named_executable
from tests.support.enforce_procs import is_dead, process_info, python_env, python_sleeper
from tests.support.reaper import die_with_parent

Spawn = Callable[..., SpawnedProcess]


@pytest.fixture
def guard(spawn: Spawn) -> Guard:
    """The "agent" is an unrelated process, so the test's own children are fair targets."""
    return Guard(agent_pid=spawn("ea-term-agent", program="sleep").pid)


def start(reaper: ProcessReaper, argv: list[str]) -> subprocess.Popen[bytes]:
    popen = subprocess.Popen(
        argv, env=python_env(), start_new_session=True, preexec_fn=die_with_parent(), stdout=subprocess.PIPE
    )
    return reaper.track(popen)


def test_sigterm_stops_a_blocked_process(guard: Guard, spawn: Spawn) -> None:
    target = spawn("ea-p2p-standin", program="sleep")
    result = PsutilEnforcer(guard, grace_seconds=5).terminate(process_info(target.pid))
    assert result.outcome is Outcome.KILLED
    assert result.detail == "exited after SIGTERM"
    assert result.signalled == (target.pid,)
    assert target.popen.wait(5) == -15


def test_sigkill_after_the_grace_period(guard: Guard, reaper: ProcessReaper, tmp_path: Path) -> None:
    target = start(reaper, python_sleeper("ea-stubborn", tmp_path, "stubborn"))
    assert target.stdout is not None and target.stdout.readline() == b"ready\n"  # SIGTERM now ignored
    result = PsutilEnforcer(guard, grace_seconds=0.2).terminate(process_info(target.pid))
    assert result.outcome is Outcome.KILLED
    assert result.detail == "SIGKILL after 0.2s grace"
    assert target.wait(5) == -9


def test_a_reused_pid_is_not_hit(guard: Guard, spawn: Spawn) -> None:
    target = spawn("ea-p2p-reused", program="sleep")
    seen = process_info(target.pid)
    # The snapshot saw another process under this PID: same number, other start time.
    earlier = dataclasses.replace(seen, create_time=seen.create_time - 30)
    result = PsutilEnforcer(guard).terminate(earlier)
    assert result.outcome is Outcome.KILL_FAILED
    assert "another process" in result.detail
    assert result.signalled == ()
    assert psutil.Process(target.pid).status() != psutil.STATUS_ZOMBIE
    assert target.popen.poll() is None


def test_a_process_that_already_exited(guard: Guard, spawn: Spawn, reaper: ProcessReaper) -> None:
    target = spawn("ea-p2p-gone", program="sleep")
    seen = process_info(target.pid)
    reaper.reap_one(target.pid)
    result = PsutilEnforcer(guard).terminate(seen)
    assert result.outcome is Outcome.KILL_FAILED
    assert "exited before" in result.detail


def test_an_unknown_start_time_is_never_signalled(guard: Guard, spawn: Spawn) -> None:
    target = spawn("ea-p2p-nostart", program="sleep")
    result = PsutilEnforcer(guard).terminate(dataclasses.replace(process_info(target.pid), create_time=0.0))
    assert result.outcome is Outcome.KILL_FAILED
    assert target.popen.poll() is None


def test_the_agents_own_children_are_protected(spawn: Spawn) -> None:
    target = spawn("ea-p2p-mine", program="sleep")
    result = PsutilEnforcer(Guard()).terminate(process_info(target.pid))  # this test process is the agent
    assert result.outcome is Outcome.PROTECTED
    assert result.detail == "protected: started by the agent"
    assert target.popen.poll() is None


def test_the_guard_is_asked_again_with_fresh_data(guard: Guard, spawn: Spawn) -> None:
    target = spawn("ea-vpn-standin", program="sleep")
    protective = Guard(agent_pid=guard.agent_pid, extra=[str(target.exe)])
    stale = dataclasses.replace(process_info(target.pid), exe=None, name="qbittorrent")
    result = PsutilEnforcer(protective).terminate(stale)
    assert result.outcome is Outcome.PROTECTED
    assert target.popen.poll() is None


def test_suspend(guard: Guard, spawn: Spawn) -> None:
    target = spawn("ea-p2p-suspend", program="sleep")
    result = PsutilEnforcer(guard).suspend(process_info(target.pid))
    assert result.outcome is Outcome.SUSPENDED
    deadline = time.monotonic() + 5
    while psutil.Process(target.pid).status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert psutil.Process(target.pid).status() == psutil.STATUS_STOPPED


def test_process_tree(guard: Guard, reaper: ProcessReaper, tmp_path: Path) -> None:
    exe = named_executable("ea-p2p-parent", tmp_path)
    helper = named_executable("ea-p2p-helper", tmp_path, "sleep")
    code = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([{str(helper)!r}, '600'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = start(reaper, [str(exe), "-S", "-s", "-c", code])
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    alone = PsutilEnforcer(guard, tree=False).terminate(process_info(parent.pid))
    assert alone.signalled == (parent.pid,)
    assert not is_dead(child_pid)  # the orphaned helper keeps running without tree mode
    psutil.Process(child_pid).kill()

    parent = start(reaper, [str(exe), "-S", "-s", "-c", code])
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    result = PsutilEnforcer(guard, tree=True).terminate(process_info(parent.pid))
    assert result.outcome is Outcome.KILLED
    assert result.signalled == (parent.pid, child_pid)
    assert "1 descendant" in result.detail
    deadline = time.monotonic() + 5
    while not is_dead(child_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_dead(child_pid)


def test_without_pidfd_psutil_guards_each_signal(
    guard: Guard, reaper: ProcessReaper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path taken on macOS/Windows (no pidfd): psutil's own start-time check, polling waits."""
    monkeypatch.setattr(terminate, "_pidfd_open", lambda pid: None)
    target = start(reaper, python_sleeper("ea-stubborn-nopidfd", tmp_path, "stubborn"))
    assert target.stdout is not None and target.stdout.readline() == b"ready\n"
    seen = process_info(target.pid)
    assert PsutilEnforcer(guard).terminate(dataclasses.replace(seen, create_time=1.0)).signalled == ()
    result = PsutilEnforcer(guard, grace_seconds=0.2).terminate(seen)
    assert (result.outcome, result.detail) == (Outcome.KILLED, "SIGKILL after 0.2s grace")
    assert target.wait(5) == -9
