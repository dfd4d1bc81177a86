"""Scans that trust process events, for real: a process whose events were lost is still judged.

The watcher reads the kernel's events through a lossy stand-in of the source: it drops every
exec, as an overrun would, with or without telling (the Overrun marker). The periodic scan must
still judge a blocked program started meanwhile: the consistency check of /proc against the
tracked set finds it (no marker), or the next scan walks everything (marker). Root on Linux only.
KILL SAFETY: stops are recorded by a double, never signalled.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint_agent.agent import Agent
from endpoint_agent.collect.incremental import IncrementalCollector
from endpoint_agent.collect.proc_events import Event, ExecEvent, Overrun, ProcEventSource, open_event_source
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.watch import ExecWatcher
from tests.support import SpawnFn
from tests.support.doubles import RecordingEnforcer
from tests.support.reaction_rig import recording_agent, unique, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process connector is Linux only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="process events need root"),
]


class Lossy:
    """The real event source, minus every exec (and with an Overrun marker in their place, if told)."""

    def __init__(self, source: ProcEventSource, *, tell: bool) -> None:
        self.source = source
        self.tell = tell
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self.source.closed

    def wait(self, timeout: float | None = None) -> list[Event]:
        events = self.source.wait(timeout)
        kept: list[Event] = [e for e in events if not isinstance(e, ExecEvent)]
        lost = len(events) - len(kept)
        self.dropped += lost
        if lost and self.tell:
            kept.append(Overrun(time.monotonic_ns()))
        return kept

    def close(self) -> None:
        self.source.close()


Rig = tuple[Agent, IncrementalCollector, RecordingEnforcer, ExecWatcher, Lossy, str, ViolationStore]


def rig(tmp_path: Path, *, tell: bool) -> Iterator[Rig]:
    blocked = unique("ea-lost")
    agent, collector, enforcer, store = recording_agent(tmp_path, blocked)
    real = open_event_source()
    assert real is not None, "process events unavailable although running as root (see the log)"
    lossy = Lossy(real, tell=tell)
    watcher = ExecWatcher(
        lossy,
        react=lambda pids: agent.react(lambda: collector.snapshot_of(pids)),
        rescan=lambda: None,  # no immediate rescan: only the periodic scan may find it
        forget=collector.forget,
        changed=collector.forget,
        lost=collector.distrust,
    )
    collector.track(rewalk_scans=1000, trusted=lambda: watcher.events_live, sockets_wanted=lambda: False)
    watcher.start()
    try:
        agent.tick()  # the baseline: every process tracked from here on
        yield agent, collector, enforcer, watcher, lossy, blocked, store
    finally:
        watcher.stop()
        store.close()


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[Rig]:
    yield from rig(tmp_path, tell=False)


@pytest.fixture
def told(tmp_path: Path) -> Iterator[Rig]:
    yield from rig(tmp_path, tell=True)


def test_a_program_whose_exec_was_lost_unannounced_is_judged_by_the_next_scan(
    silent: Rig, spawn: SpawnFn
) -> None:
    agent, collector, enforcer, _, lossy, blocked, store = silent
    standin = spawn(blocked, program="sleep")
    wait_for("its exec event to be dropped", lambda: lossy.dropped >= 1)
    assert enforcer.pids == []  # the events said nothing about it
    full_walks = (collector.tracking or {})["full_walks"]
    agent.tick()  # one periodic scan, still trusting the events
    assert enforcer.pids == [standin.pid]
    tracking = collector.tracking or {}
    assert tracking["trusted"] and tracking["full_walks"] == full_walks  # the consistency check found it
    [violation] = [e.payload for e in store.events(kind="violation")]
    assert (violation["pid"], violation["process_name"]) == (standin.pid, blocked)


def test_a_program_started_during_an_overrun_is_judged_by_the_next_scan_which_walks_everything(
    told: Rig, spawn: SpawnFn
) -> None:
    agent, collector, enforcer, watcher, _, blocked, _store = told
    standin = spawn(blocked, program="sleep")
    wait_for("the overrun to be seen", lambda: watcher.stats.overruns >= 1)
    full_walks = (collector.tracking or {})["full_walks"]
    agent.tick()
    assert enforcer.pids == [standin.pid]
    assert (collector.tracking or {})["full_walks"] == full_walks + 1


def test_threads_started_between_scans_are_not_taken_for_processes(silent: Rig, spawn: SpawnFn) -> None:
    """/proc/<tid> opens for any thread: the PIDs a scan probes include threads, which must not count."""
    _, collector, *_ = silent
    done = threading.Event()
    tids: list[int] = []
    thread = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), done.wait(30)))
    thread.start()
    try:
        wait_for("the thread to run", lambda: bool(tids))
        sleeper = spawn(unique("ea-beside-thread"), program="sleep")
        snap = collector.snapshot()
        assert tids[0] not in snap.processes
        assert os.getpid() in snap.processes and sleeper.pid in snap.processes
    finally:
        done.set()
        thread.join()
