"""ProcessCache: one record per process instance and program, dropped when the process goes."""

from __future__ import annotations

import pytest

from endpoint_agent.collect.proc_stat import ProcStat
from endpoint_agent.collect.process_cache import MAX_ATTEMPTS, CachedProcess, ProcessCache

IMAGE = (1, 2, 3, 4, 5, 6, 7)
HIDDEN = (0,) * 7


def stat(pid: int, start: int = 100, image: tuple[int, ...] = IMAGE, comm: str = "app") -> ProcStat:
    return ProcStat(pid=pid, comm=comm, state="S", ppid=1, flags=0, start_ticks=start, image=image)


def entry(st: ProcStat, exe: str = "/usr/bin/app", partial: bool = False) -> CachedProcess:
    return CachedProcess(
        st.pid, st.start_ticks, st.image, st.comm, exe, (exe,), "alice", 1000, "ab" * 32, None,
        kernel_thread=False, partial=partial,
    )  # fmt: skip


def test_the_same_instance_running_the_same_program_hits() -> None:
    cache = ProcessCache()
    cache.store(entry(stat(10)))
    hit = cache.lookup(stat(10))
    assert hit is not None and hit.exe == "/usr/bin/app"
    assert (cache.stats.hits, cache.stats.misses) == (1, 0)


def test_a_reused_pid_is_never_confused_with_the_old_process() -> None:
    cache = ProcessCache()
    cache.store(entry(stat(10, start=100), exe="/usr/bin/old"))
    assert cache.lookup(stat(10, start=250)) is None  # same PID, another start time: another process
    assert 10 not in cache and cache.stats.reused_pids == 1
    cache.store(entry(stat(10, start=250), exe="/usr/bin/new"))
    assert cache.lookup(stat(10, start=100)) is None  # and the old identity never matches the new record
    assert cache.get(10) is None


def test_an_exec_is_a_new_program_for_the_same_instance() -> None:
    cache = ProcessCache()
    cache.store(entry(stat(10, image=IMAGE)))
    assert cache.lookup(stat(10, image=(9, 9, 9, 9, 9, 9, 9))) is None
    assert cache.stats.execs == 1 and 10 not in cache


def test_without_the_layout_a_new_name_counts_as_an_exec() -> None:
    cache = ProcessCache()
    cache.store(entry(stat(10, image=HIDDEN, comm="bash")))
    assert cache.lookup(stat(10, image=HIDDEN, comm="bash")) is not None
    assert cache.lookup(stat(10, image=HIDDEN, comm="qbittorrent")) is None


def test_records_are_dropped_when_their_processes_exit() -> None:
    cache = ProcessCache()
    for pid in (10, 11, 12):
        cache.store(entry(stat(pid)))
    assert cache.forget(11) and not cache.forget(11)  # an exit event
    assert cache.retain({10}) == 1  # a scan that no longer lists 12
    assert len(cache) == 1 and 10 in cache
    assert cache.stats.dropped == 2


def test_the_cap_evicts_the_oldest() -> None:
    cache = ProcessCache(max_entries=2)
    for pid in (1, 2, 3):
        cache.store(entry(stat(pid)))
    assert len(cache) == 2 and 1 not in cache and cache.stats.evicted == 1
    with pytest.raises(ValueError):
        ProcessCache(max_entries=0)


def test_an_incomplete_record_is_read_again_a_few_times() -> None:
    cache = ProcessCache()
    st = stat(10)
    previous = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        record = entry(st, partial=True)
        cache.store(record, previous=previous)
        assert record.attempts == attempt
        assert record.retry_due is (attempt < MAX_ATTEMPTS)
        previous = cache.lookup(st)
    assert previous is not None and not previous.retry_due
