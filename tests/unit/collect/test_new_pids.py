"""Where a scan looks for unannounced processes: a PID range from the kernel's counters, else a listing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from endpoint_agent.collect.new_pids import (
    RESERVED_PIDS,
    Listing,
    NewPids,
    Probe,
    pid_range,
    read_marks,
    read_pid_max,
)
from tests.support.fake_proc import FakeProc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")


def fake(root: Path, pids: tuple[int, ...] = (1, 500, 501)) -> FakeProc:
    proc = FakeProc(root)
    for pid in pids:
        proc.put(pid, start=pid, comm=f"p{pid}")
    return proc


def test_the_range_runs_from_after_the_last_reading_to_the_new_last_pid_wrapping_at_pid_max() -> None:
    assert pid_range(100, 104, 32768) == range(101, 105)
    assert pid_range(32760, 305, 32768) == (range(32761, 32768), range(RESERVED_PIDS, 306))


def test_this_kernel_has_the_counters() -> None:
    marks, pid_max = read_marks(), read_pid_max()
    assert marks is not None and pid_max is not None
    assert 0 < marks.last_pid < pid_max and marks.forks > 0 and marks.tasks > 0
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    after = read_marks()
    assert after is not None and after.forks > marks.forks
    # The child's PID lies in the range between the two readings.
    span = pid_range(marks.last_pid, after.last_pid, pid_max)
    assert any(child in r for r in (span if isinstance(span, tuple) else (span,)))


def test_without_counters_every_look_lists_proc(tmp_path: Path) -> None:
    fake(tmp_path)
    new = NewPids(str(tmp_path))
    assert new.look(3) == Listing(frozenset({1, 500, 501}))
    assert new.look(3) == Listing(frozenset({1, 500, 501}))
    assert (new.probes, new.listings) == (0, 2)


def test_a_range_when_few_tasks_started_and_nothing_when_none_did(tmp_path: Path) -> None:
    proc = fake(tmp_path)
    proc.counters(forks=1000, last_pid=501)
    new = NewPids(str(tmp_path))
    assert isinstance(new.look(3), Listing)  # the first look has nothing to compare with
    assert new.look(3) == Probe(frozenset())  # no task created since
    proc.counters(forks=1003, last_pid=504)
    assert new.look(3) == Probe(frozenset({502, 503, 504}))
    assert (new.probes, new.listings) == (2, 1)


def test_many_new_tasks_or_a_possible_full_cycle_mean_a_listing(tmp_path: Path) -> None:
    proc = fake(tmp_path)
    proc.counters(forks=1000, last_pid=501)
    new = NewPids(str(tmp_path))
    new.look(3)
    proc.counters(forks=1000 + 65, last_pid=566)  # over the bound (64 at least)
    assert isinstance(new.look(3), Listing)
    proc.counters(forks=1065 + 10, last_pid=576, tasks=490, pid_max=800)  # the cursor may have cycled
    assert isinstance(new.look(3), Listing)
    proc.counters(forks=1075 + 5, last_pid=576)  # forks but the same last PID: a whole cycle
    assert isinstance(new.look(3), Listing)
    proc.counters(forks=1080 + 5, last_pid=581)  # and a range again
    assert new.look(3) == Probe(frozenset(range(577, 582)))


def test_the_range_wraps_past_pid_max(tmp_path: Path) -> None:
    proc = fake(tmp_path)
    proc.counters(forks=10, last_pid=9_999_998, tasks=10)
    new = NewPids(str(tmp_path))
    new.look(3)
    proc.counters(forks=13, last_pid=RESERVED_PIDS, tasks=10)
    assert new.look(3) == Probe(frozenset({9_999_999, RESERVED_PIDS}))


def test_a_pid_not_yet_in_proc_is_probed_once_more(tmp_path: Path) -> None:
    proc = fake(tmp_path)
    proc.counters(forks=1000, last_pid=501)
    new = NewPids(str(tmp_path))
    new.look(3)
    proc.counters(forks=1001, last_pid=502)
    assert new.look(3) == Probe(frozenset({502}))
    new.missing({502})  # fork had allocated it, /proc did not show it yet
    assert new.look(3) == Probe(frozenset({502}))
    new.missing({502})  # still absent: it exited; not carried again
    assert new.look(3) == Probe(frozenset())


def test_an_asked_for_listing_says_which_pids_the_range_expected(tmp_path: Path) -> None:
    proc = fake(tmp_path)
    proc.counters(forks=1000, last_pid=501)
    new = NewPids(str(tmp_path))
    new.look(3)
    proc.put(502, start=502, comm="p502")
    proc.counters(forks=1001, last_pid=502)
    assert new.look(3, listing=True) == Listing(frozenset({1, 500, 501, 502}), expected=frozenset({502}))
