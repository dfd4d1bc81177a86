"""IncrementalCollector while process events track the processes: scans read only what events leave open.

A fake /proc (tests/unit/collect/test_incremental.py) lets a test change what the kernel would
show without any event, which is what the periodic consistency check and re-walk are for.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.collect.incremental import Details, IncrementalCollector
from endpoint_agent.collect.package_trust import PackageResolver
from endpoint_agent.collect.packages import PackageIndex
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


# -- with the kernel's counters: the PIDs that can be new, instead of a listing of /proc --------

LAST = 9_000_400  # the fake kernel's last PID before each test's processes


def counted(root: Path, slices: int = SLICES) -> tuple[FakeProc, FakeDetails, IncrementalCollector]:
    proc, details, collector = tracked(root, slices)
    proc.counters(forks=1000, last_pid=LAST)
    return proc, details, collector


def started(proc: FakeProc, details: FakeDetails, pid: int, comm: str, **kwargs: Any) -> None:
    proc.put(pid, start=pid - LAST, comm=comm, **kwargs)
    details.now[pid] = Details(None, (comm,), 1000, False)


def test_a_process_forked_without_exec_is_found_in_the_new_pid_range_without_a_listing(
    tmp_path: Path,
) -> None:
    proc, details, collector = counted(tmp_path)
    started(proc, details, A, "steady")
    collector.snapshot()  # the first scan lists /proc
    started(proc, details, B, "forked")
    proc.counters(forks=1002, last_pid=B)
    listed: list[str] = []
    real_listdir = os.listdir
    with pytest.MonkeyPatch.context() as mp:  # a spy: the scan must not list /proc
        mp.setattr(os, "listdir", lambda path: listed.append(str(path)) or real_listdir(path))
        snap = collector.snapshot()
    assert snap.processes[B].name == "forked" and listed == []
    assert collector.tracking is not None
    assert (collector.tracking["pid_probes"], collector.tracking["listings"]) == (1, 1)


def test_a_thread_in_the_range_is_not_a_process(tmp_path: Path) -> None:
    proc, details, collector = counted(tmp_path)
    collector.snapshot()
    started(proc, details, A, "worker", thread=True)
    proc.counters(forks=1001, last_pid=A)
    assert A not in collector.snapshot().processes
    assert details.calls == [1]


def test_a_pid_proc_shows_only_after_the_scan_is_found_by_the_next_one(tmp_path: Path) -> None:
    proc, details, collector = counted(tmp_path)
    collector.snapshot()
    proc.counters(forks=1001, last_pid=A)  # allocated; fork attaches it to /proc a moment later
    assert A not in collector.snapshot().processes
    started(proc, details, A, "late")
    assert collector.snapshot().processes[A].name == "late"  # no new task: only the absent PID


def test_a_process_the_probes_missed_is_found_and_counted_by_the_listing_of_the_round(tmp_path: Path) -> None:
    proc, details, collector = counted(tmp_path, slices=4)
    collector.snapshot()
    started(proc, details, 400, "set-tid")  # a PID outside any range (clone3 set_tid, restored)
    names = [set(collector.snapshot().processes) for _ in range(4)]  # scans 2..5; the 4th lists /proc
    assert [400 in n for n in names] == [False, False, True, True]
    collector.snapshot()  # no exec event for it by the next scan: a repair
    assert collector.tracking is not None and collector.tracking["repairs"] == 1


def test_an_exec_the_events_announce_is_read_and_the_childs_parent_name_follows(tmp_path: Path) -> None:
    proc, details, collector = counted(tmp_path)
    started(proc, details, A, "bash")
    started(proc, details, B, "child", ppid=A)
    collector.snapshot()
    assert collector.snapshot().processes[B].parent_name == "bash"
    started(proc, details, A, "make", image=9)
    collector.forget(A)  # the exec event
    calls = len(details.calls)
    snap = collector.snapshot()
    assert (snap.processes[A].name, snap.processes[B].parent_name) == ("make", "make")
    assert details.calls[calls:] == [A]  # the child's record was not read again
    assert snap.delta is not None and snap.delta.changed == {A, B}


def test_a_zombie_stays_until_reaped_and_then_leaves(tmp_path: Path) -> None:
    proc, details, collector = counted(tmp_path)
    started(proc, details, A, "short")
    collector.snapshot()
    started(proc, details, A, "short", state="Z")
    collector.forget(A)  # its exit event; the parent has not reaped it yet
    assert A in collector.snapshot().processes
    assert A in collector.snapshot().processes  # watched at every scan, no event needed
    shutil.rmtree(tmp_path / str(A))  # reaped
    snap = collector.snapshot()
    assert A not in snap.processes and A not in collector.cache
    assert snap.delta is not None and snap.delta.removed == {A}


def test_an_idle_scan_hands_on_the_same_records_and_says_nothing_changed(tmp_path: Path) -> None:
    proc, details, collector = counted(tmp_path)
    started(proc, details, A, "one")
    started(proc, details, B, "two", ppid=A)
    first = collector.snapshot()
    second = collector.snapshot()
    assert second.delta is not None and second.delta.changed == frozenset() == second.delta.removed
    assert all(second.processes[pid] is info for pid, info in first.processes.items())
    assert second.processes is not first.processes  # each snapshot its own mapping


def test_the_tracked_view_matches_a_full_walk_after_events(tmp_path: Path) -> None:
    """Whatever the events and probes did, the records equal those a fresh collector reads."""
    proc, details, collector = counted(tmp_path, slices=3)
    started(proc, details, A, "parent")
    started(proc, details, B, "kid", ppid=A)
    started(proc, details, A + 2, "grandkid", ppid=B)
    collector.snapshot()
    started(proc, details, A, "renamed", image=8)
    collector.forget(A)
    shutil.rmtree(tmp_path / str(B))
    collector.forget(B)  # exit: the grandchild goes to init
    started(proc, details, A + 2, "grandkid", ppid=1)
    started(proc, details, A + 3, "new", ppid=A)
    proc.counters(forks=1004, last_pid=A + 3)
    for _ in range(4):
        tracked_snap = collector.snapshot()
    packages = PackageResolver(PackageIndex(str(tmp_path)), proc_root=str(tmp_path))
    fresh_snap = IncrementalCollector(proc_root=str(tmp_path), details=details, packages=packages).snapshot()
    assert tracked_snap.processes.keys() == fresh_snap.processes.keys() == {1, A, A + 2, A + 3}
    for pid, info in fresh_snap.processes.items():
        assert dataclasses.replace(tracked_snap.processes[pid]) == info


def test_tracking_set_again_starts_from_a_listing(tmp_path: Path) -> None:
    proc, details, collector = counted(tmp_path)
    started(proc, details, A, "steady")
    collector.snapshot()
    collector.track(rewalk_scans=7, trusted=lambda: True, sockets_wanted=lambda: False)  # new slices
    assert A in collector.snapshot().processes  # no new PID, yet every process is there
