"""Agent.react: the tick's pipeline on a partial snapshot -- same rails, dedup and store, no pruning.

Processes are records only (PIDs above any real pid_max) and the enforcer is a double.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from endpoint_agent.report.store import ViolationStore
from endpoint_agent.types import ProcessInfo, Snapshot
from tests.support.agent_rig import FAKE_PID, Rig, Static, active, proc


def partial(*processes: ProcessInfo) -> Snapshot:
    return Snapshot(datetime.now(UTC), {p.pid: p for p in processes})


class CountingStore(ViolationStore):
    commits = 0

    def commit_tick(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        CountingStore.commits += 1
        super().commit_tick(*args, **kwargs)  # type: ignore[arg-type]


def test_a_new_process_is_stopped_and_recorded_by_the_fast_path(tmp_path: Path) -> None:
    rig = Rig(tmp_path, Static(active(), [proc(1, "steam")]))
    rig.agent.tick()
    client = proc(2, "qbittorrent")
    result = rig.agent.react(lambda: partial(client))
    assert rig.enforcer.pids == [client.pid]
    assert [(v.rule_id, v.action.value) for v in result.violations] == [("p2p", "killed")]
    assert [v["pid"] for v in rig.violations() if v["rule_id"] == "p2p"] == [client.pid]
    assert rig.agent.reactions == 1 and rig.agent.scans == 1  # a reaction is not a scan
    assert rig.agent.last is not None and rig.agent.last.processes == 1


def test_the_next_scan_does_not_record_it_again(tmp_path: Path) -> None:
    static = Static(active(), [proc(1, "steam")])
    rig = Rig(tmp_path, static)
    rig.agent.tick()
    client = proc(2, "qbittorrent")
    rig.agent.react(lambda: partial(client))
    static.processes = [proc(1, "steam"), client]
    assert rig.agent.tick().violations == ()
    assert rig.enforcer.pids == [client.pid]  # stopped once


def test_a_reaction_forgets_nobody(tmp_path: Path) -> None:
    static = Static(active(mode="monitor"), [proc(1, "qbittorrent")])
    rig = Rig(tmp_path, static)
    rig.agent.tick()  # would_block recorded for instance 1
    rig.agent.react(lambda: partial(proc(2, "steam")))  # a snapshot without instance 1
    rig.agent.react(lambda: partial(proc(3, "qbittorrent-nox")))
    assert rig.agent.tick().violations == ()  # instances 1 and 3 were not forgotten meanwhile
    assert sorted(v["pid"] for v in rig.violations()) == [FAKE_PID + 1, FAKE_PID + 2, FAKE_PID + 3]


def test_before_the_first_scan_a_reaction_keeps_what_the_store_remembers(tmp_path: Path) -> None:
    static = Static(active(mode="monitor"), [proc(1, "qbittorrent")])
    first = Rig(tmp_path, static)
    first.agent.tick()
    first.store.close()
    again = Rig(tmp_path, static, store=ViolationStore.open(tmp_path / "violations.sqlite3"))
    again.agent.react(lambda: partial(proc(2, "steam")))  # the restarted agent's first act
    again.agent.tick()
    assert sorted(v["rule_id"] for v in again.violations()) == ["games", "p2p"]  # p2p still once


def test_a_reaction_that_finds_nothing_writes_nothing(tmp_path: Path) -> None:
    store = CountingStore.open(tmp_path / "violations.sqlite3")
    rig = Rig(tmp_path, Static(active(), [proc(1, "bash")]), store=store)
    rig.agent.tick()
    before = CountingStore.commits
    for n in range(5):
        rig.agent.react(lambda n=n: partial(proc(10 + n, "vim")))  # type: ignore[misc]
    assert CountingStore.commits == before


def test_reactions_and_ticks_never_overlap(tmp_path: Path) -> None:
    static = Static(active(), [proc(1, "steam")])
    rig = Rig(tmp_path, static)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def slow_snapshot() -> Snapshot:
        order.append("react start")
        inside.set()
        release.wait(10)
        order.append("react end")
        return partial(proc(2, "qbittorrent"))

    worker = threading.Thread(target=rig.agent.react, args=(slow_snapshot,))
    worker.start()
    assert inside.wait(10)
    ticker = threading.Thread(target=lambda: (rig.agent.tick(), order.append("tick done")))
    ticker.start()
    ticker.join(0.2)  # it must be waiting for the reaction (not asserted by time: by order below)
    release.set()
    worker.join(10)
    ticker.join(10)
    assert order == ["react start", "react end", "tick done"]
