"""IncrementalCollector while process events track the processes: scans read only what events leave open.

A fake /proc (tests/unit/collect/test_incremental.py) lets a test change what the kernel would
show without any event, which is what the periodic consistency check and re-walk are for.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from endpoint_agent.collect.incremental import Details, IncrementalCollector
from endpoint_agent.collect.proc_stat import PF_KTHREAD
from tests.support import Listen, SpawnFn
from tests.support.fake_proc import FakeDetails, FakeProc, fake_collector

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")

A, B = 9_000_500, 9_000_501  # re-walked at scans 500 and 501 of 1000: not in these tests
SLICES = 1000


def tracked(root: Path, slices: int = SLICES) -> tuple[FakeProc, FakeDetails, IncrementalCollector]:
    proc, details, collector = fake_collector(root)
    proc.put(1, start=1, comm="init", ppid=0)  # every parent that exits leaves its children to it
    details.now[1] = Details(None, ("init",), 0, False)
    collector.track(rewalk_scans=slices, trusted=lambda: True, sockets_wanted=lambda: False)
    return proc, details, collector


def test_a_tracked_process_is_not_read_again_until_an_event_says_so(tmp_path: Path) -> None:
    proc, details, collector = tracked(tmp_path)
    proc.put(A, start=100, comm="editor")
    details.now[A] = Details(None, ("editor",), 1000, False)
    assert collector.snapshot().processes[A].name == "editor"
    proc.put(A, start=100, comm="qbittorrent", image=8)  # an exec the scan is not told about
    details.now[A] = Details(None, ("qbittorrent",), 1000, False)
    assert collector.snapshot().processes[A].name == "editor"  # trusted: /proc/<pid>/stat not read
    collector.forget(A)  # the exec event (ExecWatcher's `changed`)
    assert collector.snapshot().processes[A].name == "qbittorrent"
    assert details.calls == [1, A, A]


def test_a_pid_the_events_did_not_announce_is_read_at_the_next_scan(tmp_path: Path) -> None:
    proc, details, collector = tracked(tmp_path)
    proc.put(A, start=100, comm="steady")
    details.now[A] = Details(None, ("steady",), 1000, False)
    collector.snapshot()
    proc.put(B, start=200, comm="newcomer")  # started while events were lost
    details.now[B] = Details(None, ("newcomer",), 1000, False)
    assert collector.snapshot().processes[B].name == "newcomer"
    assert collector.tracking is not None and collector.tracking["untracked_read"] == 3  # init, A, then B
    assert collector.tracking["full_walks"] == 0
    shutil.rmtree(tmp_path / str(B))  # and it ended without an exit event
    assert B not in collector.snapshot().processes and B not in collector.cache


def test_a_child_whose_parent_is_gone_is_read_again(tmp_path: Path) -> None:
    proc, details, collector = tracked(tmp_path)
    proc.put(A, start=100, comm="parent")
    proc.put(B, start=101, comm="child", ppid=A)
    details.now[A] = Details(None, ("parent",), 1000, False)
    details.now[B] = Details(None, ("child",), 1000, False)
    assert collector.snapshot().processes[B].parent_name == "parent"
    shutil.rmtree(tmp_path / str(A))
    proc.put(B, start=101, comm="child", ppid=1)  # re-parented to init
    child = collector.snapshot().processes[B]
    assert (child.ppid, child.parent_name) == (1, "init")


def test_the_re_walk_repairs_and_counts_what_the_events_missed(tmp_path: Path) -> None:
    proc, details, collector = tracked(tmp_path, slices=4)
    proc.put(A, start=100, comm="bash")
    details.now[A] = Details(None, ("bash",), 1000, False)
    collector.snapshot()
    proc.put(A, start=100, comm="aria2c", image=9)  # exec'd; its event was lost
    details.now[A] = Details(None, ("aria2c", "x.torrent"), 1000, False)
    names = [collector.snapshot().processes[A].name for _ in range(4)]
    assert A % 4 == 0  # its slice comes at the 4th scan: not before, and within one round of slices
    assert names == ["bash", "bash", "aria2c", "aria2c"]
    assert collector.tracking is not None and collector.tracking["repairs"] == 1


def test_lost_events_make_the_next_scan_walk_everything(tmp_path: Path) -> None:
    proc, details, collector = tracked(tmp_path)
    proc.put(A, start=100, comm="one")
    details.now[A] = Details(None, ("one",), 1000, False)
    collector.snapshot()
    proc.put(A, start=100, comm="two", image=9)
    details.now[A] = Details(None, ("two",), 1000, False)
    collector.distrust()  # an overrun
    assert collector.snapshot().processes[A].name == "two"
    assert collector.tracking is not None and collector.tracking["full_walks"] == 1
    assert collector.snapshot().processes[A].name == "two"  # and trusting again after it
    assert collector.tracking["full_walks"] == 1


def test_untrusted_events_mean_full_walks_as_without_tracking(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    collector.track(rewalk_scans=SLICES, trusted=lambda: False, sockets_wanted=lambda: False)
    proc.put(A, start=100, comm="one")
    details.now[A] = Details(None, ("one",), 1000, False)
    collector.snapshot()
    proc.put(A, start=100, comm="two", image=9)
    details.now[A] = Details(None, ("two",), 1000, False)
    assert collector.snapshot().processes[A].name == "two"


def test_socket_tables_are_read_only_when_the_policy_looks_at_connections(spawn: SpawnFn) -> None:
    listener = spawn("ea-track-listen", Listen("tcp", "127.0.0.1"))
    wanted = [False]
    collector = IncrementalCollector()
    collector.track(rewalk_scans=10, trusted=lambda: True, sockets_wanted=lambda: wanted[0])
    collector.snapshot()  # trusted from the start: no tables
    quiet = collector.snapshot()
    assert listener.pid in quiet.processes and quiet.connections == ()
    wanted[0] = True  # a network rule arrived
    assert any(c.pid == listener.pid for c in collector.snapshot().connections)


def test_an_event_arriving_just_after_the_re_walk_is_not_a_repair(tmp_path: Path) -> None:
    proc, details, collector = tracked(tmp_path, slices=4)
    proc.put(A, start=100, comm="bash")
    details.now[A] = Details(None, ("bash",), 1000, False)
    collector.snapshot()
    proc.put(A, start=100, comm="make", image=9)
    details.now[A] = Details(None, ("make",), 1000, False)
    for _ in range(3):  # the third is A's slice: the exec is seen before its event is handled
        collector.snapshot()
    collector.forget(A)  # the exec event, read a few milliseconds late
    collector.snapshot()
    assert collector.tracking is not None and collector.tracking["repairs"] == 0


def test_a_kernel_worker_showing_other_work_in_its_name_is_not_a_repair(tmp_path: Path) -> None:
    proc, _, collector = tracked(tmp_path, slices=2)
    proc.put(A, start=5, comm="kworker/1:2-events", image=0, flags=PF_KTHREAD, ppid=0)
    collector.snapshot()
    proc.put(A, start=5, comm="kworker/1:2-writeback", image=0, flags=PF_KTHREAD, ppid=0)
    for _ in range(3):
        collector.snapshot()
    assert collector.tracking is not None and collector.tracking["repairs"] == 0
