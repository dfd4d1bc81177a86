"""One collector API: both implementations take full and single-process snapshots of this machine alike."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import psutil
import pytest

from endpoint_agent.collect.api import MachineCollector, machine_collector, open_collector
from endpoint_agent.collect.incremental import IncrementalCollector, linux_procfs_available

LINUX_PROC = linux_procfs_available()

IMPLEMENTATIONS: dict[str, Callable[[], MachineCollector]] = {
    "psutil": machine_collector,
    "incremental": IncrementalCollector,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def collector(request: pytest.FixtureRequest) -> MachineCollector:
    if request.param == "incremental" and not LINUX_PROC:
        pytest.skip("the incremental collector reads Linux /proc")
    return IMPLEMENTATIONS[request.param]()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def test_open_collector_is_the_incremental_reader_where_proc_allows() -> None:
    collector = open_collector()
    assert isinstance(collector, IncrementalCollector) == LINUX_PROC
    assert os.getpid() in collector.snapshot().processes


def test_a_single_process_snapshot_has_it_its_parent_name_and_its_sockets(
    collector: MachineCollector, listener: socket.socket
) -> None:
    me = psutil.Process()
    snap = collector.snapshot_of([os.getpid()])
    assert list(snap.processes) == [os.getpid()]
    info = snap.processes[os.getpid()]
    assert info.ppid == me.ppid() and info.parent_name == psutil.Process(me.ppid()).name()
    assert info.exe == me.exe() and info.cmdline == tuple(me.cmdline())
    port = listener.getsockname()[1]
    mine = [c for c in snap.connections if c.laddr is not None and c.laddr.port == port]
    assert [(c.pid, c.status) for c in mine] == [(os.getpid(), "LISTEN")]
    assert all(c.pid == os.getpid() for c in snap.connections)


def test_a_process_that_is_gone_gives_an_empty_snapshot(collector: MachineCollector) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    snap = collector.snapshot_of([child.pid])
    assert snap.processes == {} and snap.connections == ()
    collector.forget(child.pid)  # nothing to drop, and no error


def test_the_full_snapshot_agrees_with_the_single_one(collector: MachineCollector) -> None:
    full = collector.snapshot().processes[os.getpid()]
    single = collector.snapshot_of([os.getpid()]).processes[os.getpid()]
    assert (full.name, full.exe, full.cmdline, full.ppid, full.parent_name, full.create_time) == (
        single.name,
        single.exe,
        single.cmdline,
        single.ppid,
        single.parent_name,
        single.create_time,
    )
