"""The guard: what is never signalled, and that a protected *name* cannot be borrowed by a user."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.types import ProcessInfo
from tests.support import ProcessReaper, SpawnedProcess, shared_exe_dir, spawn_named_process
from tests.support.enforce_procs import process_info

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file ownership, running as nobody)")
SYSTEM_PYTHON = os.path.realpath(sys.executable)


def info(**kw: object) -> ProcessInfo:
    base: dict[str, object] = {"pid": 31337, "ppid": 31000, "name": "app", "uid": 1000, "create_time": 1.0}
    base.update(kw)
    return ProcessInfo(**base)  # type: ignore[arg-type]


@pytest.fixture
def guard(spawn: Callable[..., SpawnedProcess]) -> Guard:
    """A guard whose "agent" is an unrelated process, so the test's own children are fair targets."""
    stand_in_agent = spawn("ea-guard-agent", program="sleep")
    return Guard(agent_pid=stand_in_agent.pid)


@pytest.fixture
def own_dir() -> Iterator[Path]:
    """A directory every user may traverse, for binaries this module changes (owner, mode)."""
    path = shared_exe_dir("ea-guard-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_pid_1_pid_0_and_kernel_threads() -> None:
    g = Guard()
    assert str(g.check(info(pid=1, name="anything"))) == "PID 1"
    assert g.check(info(pid=0)) is not None
    assert str(g.check(info(name="kworker/0:1", kernel_thread=True))) == "kernel thread"


def test_the_agent_its_ancestors_and_its_helpers() -> None:
    g = Guard()  # this test process plays the agent
    me = process_info(os.getpid())
    assert str(g.check(me)) == "the agent itself"
    for parent in psutil.Process().parents():
        if parent.pid > 1:
            assert str(g.check(process_info(parent.pid))) == "an ancestor of the agent"
    assert str(g.check(info(ppid=os.getpid()))) == "started by the agent"


def test_an_ordinary_process_is_not_protected(guard: Guard, spawn: Callable[..., SpawnedProcess]) -> None:
    proc = spawn("ea-qbittorrent-x", program="sleep")
    assert guard.check(process_info(proc.pid)) is None


@root_only
def test_a_system_binary_is_protected_by_its_resolved_executable(guard: Guard, own_dir: Path) -> None:
    with ProcessReaper() as reaper:
        sshd = spawn_named_process("sshd", program="sleep", exe_dir=own_dir, reaper=reaper)
        live = process_info(sshd.pid)
        assert (own_dir / "sshd").stat().st_uid == 0
        assert str(guard.check(live)) == "system component 'sshd'"
        # the process renamed itself (comm), the executable is still the root-owned sshd
        assert guard.check(info(pid=sshd.pid, name="innocent", exe=str(own_dir / "sshd"))) is not None


@root_only
def test_a_user_copy_named_like_a_system_component_is_not_protected(guard: Guard, own_dir: Path) -> None:
    with ProcessReaper() as reaper:
        for name in ("sshd", "Xorg", "apt-get"):
            exe = own_dir / name
            shutil.copyfile(shutil.which("sleep") or "/bin/sleep", exe)
            os.chown(exe, 65534, 65534)
            exe.chmod(0o755)
            fake = spawn_named_process(name, program="sleep", exe_dir=own_dir, reaper=reaper, user="nobody")
            assert guard.check(process_info(fake.pid)) is None, name


def test_name_only_counts_when_it_cannot_be_faked_or_nothing_better_is_known(guard: Guard) -> None:
    # executable unknown (unreadable, exited): fail safe
    assert str(guard.check(info(name="sshd", exe=None))) == "system component 'sshd'"
    # an interpreted system tool: a root-owned interpreter, running as root, under its own comm
    assert guard.check(info(name="unattended-upgr", exe=SYSTEM_PYTHON, uid=0)) is not None
    # the same trick as an ordinary user is not protected
    assert guard.check(info(name="unattended-upgr", exe=SYSTEM_PYTHON, uid=1000)) is None
    # Linux truncates comm to 15 characters
    if sys.platform.startswith("linux"):
        assert guard.check(info(name="gdm-session-wor", exe=None)) is not None


def test_local_protected_list(guard: Guard) -> None:
    g = Guard(agent_pid=guard.agent_pid, extra=["/opt/corp-vpn/*", "corpvpnd"])
    assert str(g.check(info(exe="/opt/corp-vpn/bin/tunnel"))) == "local protected path '/opt/corp-vpn/*'"
    assert str(g.check(info(name="corpvpnd", exe=None))) == "local protected name 'corpvpnd'"
    assert g.check(info(name="corpvpnd-helper", exe=None)) is None
    assert guard.check(info(exe="/opt/corp-vpn/bin/tunnel")) is None


@root_only
def test_check_live_reads_the_process_again(guard: Guard, own_dir: Path) -> None:
    with ProcessReaper() as reaper:
        sshd = spawn_named_process("sshd", program="sleep", exe_dir=own_dir, reaper=reaper)
        stale = info(pid=sshd.pid, name="qbittorrent", exe=None, uid=1000, create_time=0.0)
        assert guard.check(info(pid=sshd.pid, name="qbittorrent", exe="/nonexistent/qbittorrent")) is None
        assert str(guard.check_live(stale, psutil.Process(sshd.pid))) == "system component 'sshd'"
