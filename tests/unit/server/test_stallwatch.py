"""What holds up the server's event loop, told per stall (server_stub/stallwatch.py) and summed up
per benchmark step (bench/fleetsim/stalls.py); and the heap settled out of the collector's way
(server_stub/heap.py). Stalls here are made on purpose and far longer than the threshold, so a
busy machine can delay a line but not change what it says."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from pathlib import Path

import pytest

from bench.fleetsim.stalls import StallLog
from server_stub import heap, stallwatch
from server_stub.stallwatch import PREFIX, StallWatch
from server_stub.watcher import CLEARED

STALL = 0.4  # seconds the loop is held up
THRESHOLD = 0.05


def _stall_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(PREFIX)]


async def _held_up(how: str) -> None:
    watch = StallWatch(THRESHOLD)
    watch.start()
    try:
        await asyncio.sleep(0.1)
        started = time.monotonic()
        if how == "busy":
            while time.monotonic() - started < STALL:
                pass  # Python work on the loop
        else:
            time.sleep(STALL)  # a blocking call: the loop thread runs nothing
        deadline = time.monotonic() + 10.0
        while not watch.stalls and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the watch logs once the loop is back
    finally:
        watch.stop()


@pytest.mark.parametrize("how", ["busy", "blocked"])
def test_a_stall_is_logged_with_where_the_loop_thread_was_and_how_its_time_went(
    how: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger="server_stub.stallwatch")
    asyncio.run(_held_up(how))
    lines = _stall_lines(caplog)
    assert lines, "no stall logged"
    longest = max(lines, key=lambda line: int(line.split()[3]))
    assert int(longest.split()[3]) >= STALL * 1e3 * 0.9
    assert "_held_up" in longest  # the loop thread's stack, sampled during the stall
    # ... and its state as the kernel saw it: asleep in a system call when blocked
    kernel = longest.split("loop thread (kernel): ")[1].split(";")[0]
    if how == "blocked":
        assert "% S" in kernel and "% R" not in kernel, kernel
    assert "hypervisor steal " in longest and "major faults " in longest

    # bench fleet reads the same lines from the server's log and sums them up
    log = tmp_path / "server.log"
    assert StallLog(None).since_last().count == 0
    reader = StallLog(log)  # before the server wrote anything
    assert reader.since_last().count == 0
    log.write_text(
        "".join(f"2030-01-01 WARNING server_stub.stallwatch: {line}\n" for line in lines)
        + f"2030-01-01 WARNING server_stub.watcher: {CLEARED}: not read for 6.0 s; ...\n"
    )
    summary = reader.since_last()
    assert summary.count == len(lines) and summary.longest_ms >= STALL * 1e3 * 0.9
    assert summary.faults >= 0 and summary.steal_ms >= 0
    assert "major page faults" in summary.line(THRESHOLD * 1e3)
    if how == "busy":  # on a CPU, or waiting for one: not blocked
        assert summary.ran_ms + summary.wait_ms > summary.blocked_ms
    else:
        assert summary.blocked_ms > summary.ran_ms
    assert reader.since_last().count == 0  # each line counted once
    assert summary.worst and summary.worst[0][1].startswith(PREFIX)
    assert f"stalls over {THRESHOLD * 1e3:g} ms: {len(lines)}," in summary.line(THRESHOLD * 1e3)
    assert summary.cleared == [f"{CLEARED}: not read for 6.0 s; ..."]
    assert "key cache CLEARED 1 time(s)" in summary.line(THRESHOLD * 1e3)


def test_the_steal_and_page_faults_of_a_stall_line_are_summed_up(tmp_path: Path) -> None:
    line = (
        f"{PREFIX} 300 ms: loop thread ran 0 ms, waited for a CPU 0 ms, blocked 300 ms; other threads "
        "ran 1 ms, waited for a CPU 2 ms; gc 0 ms (on a CPU 0 ms; 1 full: 0 garbage freed, 9 objects kept); "
        "hypervisor steal 250 ms, major faults 3; loop thread (kernel): 100% R; loop thread in: x; from "
        "monotonic 12.000"
    )
    older = f"{PREFIX} 100 ms: loop thread ran 100 ms, waited for a CPU 0 ms, blocked 0 ms; other threads " \
        "ran 0 ms, waited for a CPU 0 ms; gc 0 ms (on a CPU 0 ms; 0 full); loop thread in: y"  # fmt: skip
    log = tmp_path / "server.log"
    reader = StallLog(log)
    log.write_text(f"W {line}\nW {older}\n")
    summary = reader.since_last()
    assert (summary.count, summary.steal_ms, summary.faults, summary.blocked_ms) == (2, 250.0, 3, 300.0)
    assert "hypervisor took 0.2 s" in summary.line(50) and "3 major page faults" in summary.line(50)


def test_a_collection_in_another_thread_counts_for_the_stall_it_overlaps() -> None:
    # A collection holds the GIL: the watch sees the stall only once it has ended, so what counts
    # is when it ran, not when the stall was noticed.
    watch = StallWatch(THRESHOLD)
    watch._loop_ident = threading.get_ident()  # this thread plays the loop thread

    def collect_fully() -> None:
        watch._gc("start", {"generation": 2})
        time.sleep(0.05)
        watch._gc("stop", {"generation": 2, "collected": 7})

    began = time.monotonic()
    worker = threading.Thread(target=collect_fully)
    worker.start()
    worker.join()
    watch._gc("start", {"generation": 1})
    watch._gc("stop", {"generation": 1, "collected": 0})  # a younger one, in the loop thread
    watch._gc("start", {"generation": 0})  # the youngest are not counted (hundreds a second)
    watch._gc("stop", {"generation": 0, "collected": 0})
    ended = time.monotonic()
    wall, _cpu, full, last = watch._gc_during(began, ended)
    assert full == 1 and wall >= 0.05
    assert len(watch._collections) == 2  # the full one and the younger one
    assert last.startswith(" in another thread,") and "7 garbage freed" in last and "objects kept: " in last
    assert watch._gc_during(ended + 1, ended + 2) == (0.0, 0.0, 0, "")


def test_the_kernel_readings_of_this_process_are_numbers() -> None:
    tid = threading.get_native_id()
    _when, (run, wait), steal, faults = stallwatch._kernel(tid)
    assert run > 0 and wait >= 0 and steal >= 0 and faults >= 0
    assert stallwatch._state(tid) == "R"  # this thread, reading its own state, is running
    assert stallwatch._state(-1) == "?"


def test_the_stall_watch_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(stallwatch.ENV, raising=False)
    assert stallwatch.from_env() is None
    monkeypatch.setenv(stallwatch.ENV, "0")
    assert stallwatch.from_env() is None
    monkeypatch.setenv(stallwatch.ENV, "fifty")
    assert stallwatch.from_env() is None  # said in one line, not a crash
    monkeypatch.setenv(stallwatch.ENV, "50")
    watch = stallwatch.from_env()
    assert watch is not None and watch.threshold == pytest.approx(0.05)


def test_settling_the_heap_freezes_what_is_alive_and_collects_garbage_first() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    alive = [Cycle() for _ in range(100)]
    Cycle()  # garbage in a cycle: collected, not frozen
    before = gc.get_threshold()
    try:
        frozen = heap.settle()
        assert frozen >= len(alive) and gc.get_freeze_count() == frozen
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in alive)  # out of the collector's walks
        assert not any(isinstance(o, Cycle) for o in gc.get_objects())
    finally:
        gc.unfreeze()  # this test process goes on as before
        heap.release(before[2])
    assert gc.get_threshold() == before


def test_once_settled_full_collections_come_from_collect_old_and_young_ones_go_on() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] >= heap.MANUAL
        old = Cycle()
        gc.collect(1)
        gc.collect(1)  # it outlived two young collections: in the oldest generation now
        assert any(o is old for o in gc.get_objects(2))
        gone = weakref.ref(old)
        del old  # an old cycle let go: young collections do not free it ...
        gc.collect(1)
        assert gone() is not None
        heap.collect_old()  # ... the clock's full collection does
        assert gone() is None
        young = weakref.ref(Cycle())  # a young cycle is freed by a young collection, as before
        gc.collect(0)
        assert young() is None
    finally:
        gc.unfreeze()
        heap.release(before[2])
    assert gc.get_threshold() == before
    heap.collect_old()  # not settled: nothing taken over, nothing done
