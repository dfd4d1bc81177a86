"""IncrementalCollector: the same snapshot as the full collector, reading per scan only what changes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from endpoint_agent.collect.api import machine_collector
from endpoint_agent.collect.incremental import Details, IncrementalCollector
from endpoint_agent.collect.proc_stat import CLOCK_TICKS, PF_KTHREAD
from endpoint_agent.types import Connection, Snapshot
from tests.support import Connect, Listen, ProcessReaper, SpawnFn
from tests.support.fake_proc import BOOT, FAKE_PID, fake_collector

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")


def test_attributes_are_read_once_per_process_instance(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    proc.put(FAKE_PID, start=100, comm="alpha")
    details.now[FAKE_PID] = Details(None, ("alpha", "--flag"), 1000, False)
    first = collector.snapshot().processes[FAKE_PID]
    for _ in range(3):
        assert collector.snapshot().processes[FAKE_PID] == first
    assert details.calls == [FAKE_PID]
    assert first.cmdline == ("alpha", "--flag") and first.uid == 1000
    assert first.create_time == pytest.approx(100 / CLOCK_TICKS + BOOT)


def test_a_pid_reused_by_a_new_process_is_never_confused_with_the_old_one(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    proc.put(FAKE_PID, start=100, comm="editor")
    details.now[FAKE_PID] = Details(None, ("editor", "notes.txt"), 1000, False)
    old = collector.snapshot().processes[FAKE_PID]
    # The editor exits; a torrent client started later gets the same PID (another start time).
    proc.put(FAKE_PID, start=5000, comm="qbittorrent")
    details.now[FAKE_PID] = Details(None, ("qbittorrent", "--seed"), 1001, False)
    new = collector.snapshot().processes[FAKE_PID]
    assert details.calls == [FAKE_PID, FAKE_PID]  # read afresh, not served from the old record
    assert (new.name, new.cmdline, new.uid) == ("qbittorrent", ("qbittorrent", "--seed"), 1001)
    assert new.key != old.key and new.create_time > old.create_time
    assert collector.cache.stats.reused_pids == 1


def test_an_exec_in_place_is_read_again(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    proc.put(FAKE_PID, start=100, comm="bash", image=7)
    details.now[FAKE_PID] = Details(None, ("bash",), 1000, False)
    before = collector.snapshot().processes[FAKE_PID]
    proc.put(FAKE_PID, start=100, comm="bash", image=8)  # `exec bash -c 'torrent ...'`: same name
    details.now[FAKE_PID] = Details(None, ("bash", "-c", "transmission-cli x.torrent"), 1000, False)
    after = collector.snapshot().processes[FAKE_PID]
    assert after.key == before.key and after.cmdline == ("bash", "-c", "transmission-cli x.torrent")


def test_kernel_threads_need_no_reading(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    proc.put(FAKE_PID, start=5, comm="kworker/0:1", image=0, flags=PF_KTHREAD)
    info = collector.snapshot().processes[FAKE_PID]
    assert info.kernel_thread and info.uid == 0 and info.exe is None and details.calls == []


def test_a_process_that_vanishes_while_read_is_left_out(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    proc.put(FAKE_PID, start=100, comm="brief")  # details.now has nothing: psutil says it is gone
    assert FAKE_PID not in collector.snapshot().processes
    assert FAKE_PID not in collector.cache and details.calls == [FAKE_PID]


# -- real processes --------------------------------------------------------------------------------


def by_pid(snapshot: Snapshot, pids: set[int]) -> dict[int, list[Connection]]:
    out: dict[int, list[Connection]] = {pid: [] for pid in pids}
    for conn in snapshot.connections:
        if conn.pid in pids:
            out[conn.pid].append(conn)
    return {pid: sorted(conns, key=repr) for pid, conns in out.items()}


def test_the_snapshot_equals_the_full_collectors(spawn: SpawnFn) -> None:
    server = spawn("ea-inc-server", Listen("tcp", "127.0.0.1"), Listen("udp", "::1"))
    client = spawn("ea-inc-client", Connect(server.listening[0].local[1]))
    sleeper = spawn("ea-inc-sleeper", program="sleep")
    server.wait_accepted(1)
    pids = {server.pid, client.pid, sleeper.pid}
    collector = IncrementalCollector()
    collector.snapshot()
    incremental = collector.snapshot()  # the second scan: served from the caches
    full = machine_collector().snapshot()
    for pid in pids:
        assert incremental.processes[pid] == full.processes[pid]
    assert by_pid(incremental, pids) == by_pid(full, pids)
    assert {c.direction.value for c in by_pid(incremental, pids)[server.pid]} == {"listen", "inbound"}


def test_records_are_dropped_when_processes_exit(spawn: SpawnFn, reaper: ProcessReaper) -> None:
    first = spawn("ea-inc-exit-1", program="sleep")
    second = spawn("ea-inc-exit-2", Listen("tcp", "127.0.0.1"))
    collector = IncrementalCollector()
    collector.snapshot()
    assert first.pid in collector.cache and second.pid in collector.cache
    reaper.reap_one(first.pid)
    collector.snapshot()  # no longer listed: dropped
    assert first.pid not in collector.cache
    collector.forget(second.pid)  # an exit event: dropped at once, before any scan
    assert second.pid not in collector.cache


def test_the_fast_path_sees_just_the_new_process_and_its_sockets(spawn: SpawnFn) -> None:
    server = spawn("ea-inc-fast", Listen("tcp", "127.0.0.1"))
    quiet = spawn("ea-inc-quiet", program="sleep")
    collector = IncrementalCollector()
    snap = collector.snapshot_of([server.pid, quiet.pid, FAKE_PID])
    assert set(snap.processes) == {server.pid, quiet.pid}
    assert snap.processes[server.pid].parent_name == _name_of(os.getpid())
    [conn] = snap.connections
    assert (conn.pid, conn.direction.value, conn.laddr.port if conn.laddr else None) == (
        server.pid,
        "listen",
        server.listening[0].local[1],
    )
    assert snap.processes == {p: collector.snapshot().processes[p] for p in (server.pid, quiet.pid)}


def _name_of(pid: int) -> str:
    import psutil

    return psutil.Process(pid).name()


def test_it_reads_only_what_changes_between_scans(spawn: SpawnFn) -> None:
    spawn("ea-inc-steady", Listen("tcp", "127.0.0.1"))
    collector = IncrementalCollector(rewalk_every=1000)
    collector.snapshot()
    before = collector.stats
    collector.snapshot()
    after = collector.stats
    details, walks = after.details_read - before.details_read, after.fd_walks - before.fd_walks
    # Other tests may start processes meanwhile; nothing near a full re-read.
    assert details < len(collector.cache) // 2 and walks < len(collector.cache) // 2
