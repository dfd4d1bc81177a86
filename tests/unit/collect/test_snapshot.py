"""Collector against the real machine, with psutil made to fail only where a race cannot be provoked."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import psutil
import pytest

from endpoint_agent.collect import Collector, collect_snapshot
from endpoint_agent.collect import snapshot as snapshot_module
from endpoint_agent.collect.connections import RawSocket
from endpoint_agent.collect.hashing import HashResult
from endpoint_agent.errors import CollectError
from endpoint_agent.types import Direction, Endpoint, ProcessInfo
from tests.support import SpawnFn
from tests.support.doubles import FakeClock

ME = os.getpid()


def fail_for_me(monkeypatch: pytest.MonkeyPatch, method: str, error: Callable[[int], Exception]) -> None:
    """Make psutil.Process.<method> raise `error` for this test process only."""
    original = getattr(psutil.Process, method)

    def patched(self: psutil.Process, *args: Any, **kwargs: Any) -> Any:
        if self.pid == ME:
            raise error(self.pid)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(psutil.Process, method, patched)


def test_own_process_is_complete() -> None:
    me = collect_snapshot().processes[ME]
    assert me.exe == psutil.Process().exe()
    assert me.cmdline == tuple(psutil.Process().cmdline())
    assert me.uid == os.getuid()
    assert me.sha256 is not None and len(me.sha256) == 64
    assert me.parent_name == psutil.Process(os.getppid()).name()
    assert not me.partial
    assert not me.kernel_thread


def test_taken_at_comes_from_the_clock() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert Collector(clock=FakeClock(when)).snapshot().taken_at == when


def test_denied_attribute_gives_a_partial_record(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_for_me(monkeypatch, "exe", lambda pid: psutil.AccessDenied(pid))
    me = collect_snapshot().processes[ME]
    assert me.partial
    assert (me.exe, me.sha256) == (None, None)
    assert me.name == psutil.Process().name()
    assert me.cmdline == tuple(psutil.Process().cmdline())


def test_denied_name_falls_back_to_the_executable_basename(
    monkeypatch: pytest.MonkeyPatch, spawn: SpawnFn
) -> None:
    child = spawn("child-of-denied", program="sleep")
    fail_for_me(monkeypatch, "name", lambda pid: psutil.AccessDenied(pid))
    snap = collect_snapshot()
    me = snap.processes[ME]
    assert me.partial
    assert me.name == os.path.basename(psutil.Process().exe())
    assert snap.processes[child.pid].parent_name == me.name


def test_zombie_error_gives_a_partial_record(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_for_me(monkeypatch, "cmdline", lambda pid: psutil.ZombieProcess(pid))
    me = collect_snapshot().processes[ME]
    assert me.partial
    assert me.cmdline == ()


def test_process_vanishing_mid_scan_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_for_me(monkeypatch, "username", lambda pid: psutil.NoSuchProcess(pid))
    snap = collect_snapshot()
    assert ME not in snap.processes
    assert os.getppid() in snap.processes  # the rest of the scan went on


def test_executable_that_cannot_be_read_gives_a_partial_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module.HashCache, "hash_process_exe", _unreadable)
    me = collect_snapshot().processes[ME]
    assert me.partial
    assert me.sha256 is None
    assert me.exe == psutil.Process().exe()


def _unreadable(self: object, pid: int, exe: str) -> HashResult:
    return HashResult(None, error="No such file or directory")


def test_executable_over_the_cap_is_not_partial() -> None:
    me = Collector(hash_max_bytes=1).snapshot().processes[ME]
    assert me.sha256 is None
    assert not me.partial


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), psutil.Error("broken")])
def test_process_listing_failure_is_a_collect_error(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(psutil, "process_iter", broken)
    with pytest.raises(CollectError, match="cannot list processes"):
        collect_snapshot()


@pytest.mark.parametrize("error", [RuntimeError("malformed line"), FileNotFoundError(2, "No such file")])
def test_socket_listing_failure_is_a_collect_error(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(psutil, "net_connections", broken)
    with pytest.raises(CollectError, match="cannot list network connections"):
        collect_snapshot()


def test_denied_socket_listing_falls_back_to_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What macOS does without root: the system-wide list is denied, our own sockets are not."""

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        conns = collect_snapshot().connections
    mine = [c for c in conns if c.pid == ME and c.laddr is not None and c.laddr.port == port]
    assert [(c.direction, c.proto, c.family) for c in mine] == [(Direction.LISTEN, "tcp", "ipv4")]


def test_kernel_threads_are_flagged_where_visible() -> None:
    snap = collect_snapshot()
    kthreadd = snap.processes.get(2)
    if kthreadd is None or kthreadd.name != "kthreadd":
        pytest.skip("no kernel threads visible (PID namespace or non-Linux)")
    assert kthreadd.kernel_thread
    children = [p for p in snap.processes.values() if p.ppid == 2]
    assert children and all(p.kernel_thread for p in children)
    assert not any(p.kernel_thread for p in snap.processes.values() if p.exe)


def test_kernel_thread_rule_without_task_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module, "_task_flags", lambda pid: None)
    is_kt = snapshot_module.is_kernel_thread
    assert is_kt(2, 0, None, ())
    assert is_kt(57, 2, None, ())
    assert not is_kt(57, 2, "/usr/bin/sleep", ("sleep",))  # pid 2 in a PID namespace is ordinary
    assert not is_kt(57, 2, None, ("bash",))
    assert not is_kt(57, 1, None, ())  # a zombie or denied process, not a kernel thread


def test_task_flags_decide_over_the_pid_heuristic() -> None:
    # this process: ordinary task, even when asked as if it looked like one
    assert snapshot_module._task_flags(ME) is not None
    assert not snapshot_module.is_kernel_thread(ME, 2, None, ())


def test_parent_name_comes_from_the_same_snapshot() -> None:
    snap = collect_snapshot()
    for proc in snap.processes.values():
        parent = snap.processes.get(proc.ppid)
        assert proc.parent_name == (parent.name if parent is not None and proc.ppid != proc.pid else None)


def test_socket_source_can_be_replaced() -> None:
    """Another source (e.g. every network namespace) feeds the same direction rules."""
    ns = "net:[4026532999]"

    def source(processes: Mapping[int, ProcessInfo]) -> list[RawSocket]:
        assert ME in processes
        listen = RawSocket(ME, "ipv4", "tcp", Endpoint("0.0.0.0", 6881), None, "LISTEN", ns)
        accepted = RawSocket(
            ME, "ipv4", "tcp", Endpoint("10.0.0.2", 6881), Endpoint("10.0.0.9", 5000), "ESTABLISHED", ns
        )
        return [listen, accepted]

    conns = Collector(sockets=source).snapshot().connections
    assert [(c.direction, c.netns) for c in conns] == [(Direction.LISTEN, ns), (Direction.INBOUND, ns)]


def test_socket_source_os_error_is_a_collect_error() -> None:
    def source(processes: Mapping[int, ProcessInfo]) -> list[RawSocket]:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(CollectError, match="cannot list network connections"):
        Collector(sockets=source).snapshot()
