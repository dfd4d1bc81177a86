"""ExecWatcher's loop, driven step by step with a scripted event source and a fake clock.

The real kernel source is exercised in tests/integration/test_reaction_real.py; here the source
only replays events, so every branch (re-checks, exits, overruns, a failing source) is reached
deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from endpoint_agent.collect.proc_events import CommEvent, Event, ExecEvent, ExitEvent, Overrun
from endpoint_agent.errors import CollectError
from endpoint_agent.exec_triage import Verdict
from endpoint_agent.watch import ExecWatcher, open_reaction


class Script:
    """An event source that hands out prepared batches, then nothing."""

    def __init__(self, *batches: Sequence[Event]) -> None:
        self.batches = [list(b) for b in batches]
        self.closed = False
        self.fail: Exception | None = None
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> list[Event]:
        self.waits.append(timeout)
        if self.fail is not None:
            raise self.fail
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, source: Script, **kwargs: object) -> None:
        self.clock = Clock()
        self.reacted: list[list[int]] = []
        self.rescans = 0
        self.forgotten: list[int] = []
        self.watcher = ExecWatcher(
            source,
            react=lambda pids: self.reacted.append(list(pids)),
            rescan=self._rescan,
            forget=self.forgotten.append,
            clock=self.clock,
            **kwargs,  # type: ignore[arg-type]
        )

    def _rescan(self) -> None:
        self.rescans += 1

    def step(self, advance: float = 0.0) -> None:
        self.clock.now += advance
        self.watcher.step(max_wait=0)


def execs(*pids: int) -> list[Event]:
    return [ExecEvent(pid=p, tgid=p, timestamp_ns=0) for p in pids]


def exit_(pid: int, tid: int | None = None) -> ExitEvent:
    return ExitEvent(pid=tid or pid, tgid=pid, timestamp_ns=0, exit_code=0, exit_signal=17)


def test_a_new_program_is_checked_at_once_then_again_for_its_connections() -> None:
    rig = Rig(Script(execs(10, 11)))
    rig.step()
    assert rig.reacted == [[10, 11]]  # one check for the batch
    rig.step(0.1)
    assert rig.reacted == [[10, 11]]  # nothing due yet
    rig.step(0.2)  # t = 0.3 >= 0.25
    rig.step(1.0)
    assert rig.reacted == [[10, 11], [10, 11], [10, 11]]
    rig.step(5.0)
    assert len(rig.reacted) == 3 and rig.watcher.status()["pending_checks"] == 0


def test_an_exited_process_is_not_checked_again_and_its_cache_goes() -> None:
    rig = Rig(Script(execs(10), [exit_(10, tid=12), exit_(10)]))
    rig.step()
    rig.step()  # a thread of 10 exits (ignored), then 10 itself
    assert rig.forgotten == [10]
    rig.step(2.0)
    assert rig.reacted == [[10]]


def test_exec_and_exit_in_one_batch_needs_no_check() -> None:
    rig = Rig(Script([*execs(10), exit_(10)]))
    rig.step()
    assert rig.reacted == [] and rig.forgotten == [10]


def test_a_second_exec_replaces_the_first_ones_checks() -> None:
    rig = Rig(Script(execs(10), execs(10)), rechecks=(1.0,))
    rig.step()
    rig.step(0.5)  # exec again: the first exec's re-check at 1.0 is stale
    rig.step(0.6)
    rig.step(0.5)
    assert rig.reacted == [[10], [10], [10]]


def test_an_overrun_triggers_one_full_scan() -> None:
    rig = Rig(Script([Overrun(0)], [Overrun(1)], [Overrun(2)]), min_rescan_seconds=1.0)
    rig.step()
    assert rig.rescans == 1
    rig.step(0.1)
    rig.step(0.1)  # overruns within a second: merged into one more scan, run when allowed
    assert rig.rescans == 1
    rig.step(1.0)
    assert rig.rescans == 2 and rig.watcher.stats.overruns == 3


def test_too_many_pending_checks_are_traded_for_a_full_scan() -> None:
    rig = Rig(Script(execs(*range(100, 120))), max_pending=10)
    rig.step()
    assert rig.rescans == 1 and rig.reacted == [] and rig.watcher.stats.dropped_checks == 60


def test_a_failing_callback_does_not_stop_the_loop() -> None:
    source = Script(execs(10), execs(11))
    calls: list[list[int]] = []

    def react(pids: Sequence[int]) -> None:
        calls.append(list(pids))
        raise RuntimeError("bad snapshot")

    watcher = ExecWatcher(source, react=react, rescan=lambda: None, rechecks=(5.0,))
    watcher.step(max_wait=0)
    watcher.step(max_wait=0)
    assert calls == [[10], [11]] and watcher.stats.failures == 2


def test_when_the_source_fails_it_polls_and_comes_back() -> None:
    broken = Script()
    broken.fail = CollectError("process events: receive failed")
    fresh = Script(execs(42))
    opened: list[Script] = []

    def reopen() -> Script | None:
        if len(opened) == 0:
            opened.append(broken)  # still not available
            return None
        opened.append(fresh)
        return fresh

    rig = Rig(broken, reopen=reopen, poll_seconds=5.0, reopen_seconds=60.0)
    rig.step()
    assert broken.closed and not rig.watcher.events_live and rig.watcher.status()["mode"] == "polling"
    rig.step()  # polling: a full scan at once, the reopen attempt fails
    assert rig.rescans == 1
    rig.step(5.0)
    assert rig.rescans == 2  # every poll_seconds
    rig.step(60.0)  # reopened: a full scan for whatever started meanwhile, then events again
    assert rig.watcher.events_live and rig.rescans == 3
    rig.step()
    assert rig.reacted == [[42]]


def test_stop_closes_the_source_and_ends_the_thread() -> None:
    source = Script()
    watcher = ExecWatcher(source, react=lambda pids: None, rescan=lambda: None)
    watcher.start()
    assert watcher.alive
    watcher.stop(timeout=10)
    assert source.closed and not watcher.alive
    watcher.ensure_running()  # stopped on purpose: not restarted
    assert not watcher.alive


def test_no_source_means_no_watcher() -> None:
    assert (
        open_reaction(react=lambda p: None, rescan=lambda: None, forget=lambda p: None, opener=lambda: None)
        is None
    )


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ExecWatcher(Script(), react=lambda p: None, rescan=lambda: None, rechecks=(0.0,))


def test_re_checks_of_execs_within_one_slot_run_together() -> None:
    rig = Rig(Script(execs(10), execs(11)), recheck_slot=0.05)
    rig.step(0.01)  # t = 100.01
    rig.step(0.01)  # a second exec 10 ms later: checked at once, on its own
    assert rig.reacted == [[10], [11]]
    rig.step(0.26)  # t = 100.28: both re-checks (100.26, 100.27) fall on the 100.30 slot
    assert rig.reacted == [[10], [11]]
    rig.step(0.02)
    assert rig.reacted == [[10], [11], [10, 11]]  # one pipeline run for both


class Sorter:
    """A triage with chosen verdicts (the real one is in tests/unit/test_exec_triage.py)."""

    def __init__(self, verdicts: dict[int, Verdict]) -> None:
        self.verdicts = verdicts
        self.asked: list[list[int]] = []
        self.fail = False

    def __call__(self, pids: Sequence[int]) -> dict[int, Verdict]:
        self.asked.append(list(pids))
        if self.fail:
            raise RuntimeError("triage bug")
        return {pid: self.verdicts[pid] for pid in pids}


def test_the_triage_decides_which_execs_are_checked_and_how_often() -> None:
    sorter = Sorter({1: Verdict.SKIP, 2: Verdict.GONE, 3: Verdict.CHECK, 4: Verdict.WATCH})
    rig = Rig(Script(execs(1, 2, 3, 4)), triage=sorter)
    rig.step()
    assert sorter.asked == [[1, 2, 3, 4]]  # once for the batch
    assert rig.reacted == [[3, 4]]
    rig.step(0.3)
    rig.step(1.0)
    assert rig.reacted == [[3, 4], [4], [4]]  # only a process a network rule could match is re-checked
    assert rig.watcher.status()["pending_checks"] == 0


def test_a_process_only_network_rules_could_match_is_checked_once_it_holds_a_socket() -> None:
    sockets = {5: False, 6: True}
    rig = Rig(
        Script(execs(5, 6)),
        triage=Sorter({5: Verdict.PROBE, 6: Verdict.PROBE}),
        probe=lambda pid: sockets[pid],
    )
    rig.step()
    assert rig.reacted == [[6]]
    sockets[5] = True  # it opened one since
    rig.step(0.3)
    assert rig.reacted == [[6], [5, 6]]
    assert rig.watcher.stats.probes == 4


def test_an_exec_that_exits_in_its_own_batch_is_not_even_triaged() -> None:
    sorter = Sorter({10: Verdict.CHECK})
    rig = Rig(Script([*execs(10), exit_(10)]), triage=sorter)
    rig.step()
    assert sorter.asked == [] and rig.reacted == []


def test_a_failing_triage_checks_everything() -> None:
    sorter = Sorter({})
    sorter.fail = True
    rig = Rig(Script(execs(7)), triage=sorter)
    rig.step()
    assert rig.reacted == [[7]] and rig.watcher.stats.failures == 1


def test_a_renamed_process_is_triaged_again() -> None:
    renamed: list[int] = []
    sorter = Sorter({8: Verdict.SKIP})
    rig = Rig(Script(execs(8)), triage=sorter, changed=renamed.append)
    rig.step()
    sorter.verdicts[8] = Verdict.CHECK  # its new name is one a rule names
    rig.watcher.handle([CommEvent(pid=8, tgid=8, timestamp_ns=0, comm="qbittorrent")])
    rig.watcher.handle([CommEvent(pid=9, tgid=8, timestamp_ns=0, comm="worker")])  # a thread: ignored
    rig.watcher.run_due()
    assert rig.reacted == [[8]] and renamed == [8, 8] and rig.watcher.stats.renames == 1  # exec, rename
