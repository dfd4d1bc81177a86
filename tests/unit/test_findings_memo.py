"""The findings memo gives the engine's findings while evaluating only what changed since the last scan."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from endpoint_agent.collect.incremental import Details
from endpoint_agent.findings_memo import FindingsMemo
from endpoint_agent.policy import CompiledPolicy, compile_policy, evaluate, parse_policy
from endpoint_agent.types import Finding, Snapshot
from tests.support.fake_proc import fake_collector

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a fake /proc, read the Linux way"
)

POLICY = """
name: memo
version: 1
mode: monitor
rules:
  - id: torrent
    category: p2p
    action: block
    message: "no"
    process: {name: ["qbittorrent*"]}
  - id: under-make
    category: build
    action: report
    message: "built"
    process: {parent: ["make"]}
"""
A, B, C = 9_000_600, 9_000_601, 9_000_602


class Counting:
    """The engine, remembering which processes it was asked about."""

    def __init__(self) -> None:
        self.asked: list[set[int]] = []

    def __call__(self, snapshot: Snapshot, compiled: CompiledPolicy) -> list[Finding]:
        self.asked.append(set(snapshot.processes))
        return list(evaluate(snapshot, compiled))


def test_only_changed_processes_reach_the_engine_and_the_findings_are_the_engines(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    proc.counters(forks=10, last_pid=A - 1)
    collector.track(rewalk_scans=1000, trusted=lambda: True, sockets_wanted=lambda: False)

    def start(pid: int, comm: str, ppid: int = 1, image: int = 7) -> None:
        proc.put(pid, start=pid - A + 1, comm=comm, ppid=ppid, image=image)
        details.now[pid] = Details(None, (comm,), 1000, False)

    start(1, "init", ppid=0)
    start(A, "qbittorrent")
    start(B, "bash")
    start(C, "cc", ppid=B)
    compiled = compile_policy(parse_policy(POLICY, "t"))
    engine = Counting()
    memo = FindingsMemo(engine)

    def scan() -> tuple[list[Finding], list[Finding]]:
        snap = collector.snapshot()
        return memo(snap, compiled), list(evaluate(snap, compiled))

    got, want = scan()
    assert got == want and [f.rule_id for f in got] == ["torrent"]
    assert engine.asked[-1] == {1, A, B, C}
    got, want = scan()
    assert got == want and engine.asked[-1] == {1, A, B, C}  # the first delta: nothing to compare with yet
    asked = len(engine.asked)
    assert scan()[0] == want and len(engine.asked) == asked  # idle: the engine is not called at all
    start(B, "make", image=9)
    collector.forget(B)  # the exec event: B and, through its name, its child C change
    got, want = scan()
    assert got == want and [(f.rule_id, f.process.pid) for f in got] == [("torrent", A), ("under-make", C)]
    assert engine.asked[-1] == {B, C}
    shutil.rmtree(tmp_path / str(A))
    collector.forget(A)  # exit
    asked = len(engine.asked)
    got, want = scan()
    assert got == want and [f.rule_id for f in got] == ["under-make"]
    assert len(engine.asked) == asked  # a departure needs no engine


def test_a_snapshot_from_elsewhere_is_evaluated_whole(tmp_path: Path) -> None:
    proc, details, collector = fake_collector(tmp_path)
    proc.counters(forks=10, last_pid=A - 1)
    collector.track(rewalk_scans=1000, trusted=lambda: True, sockets_wanted=lambda: False)
    proc.put(1, start=1, comm="init", ppid=0)
    details.now[1] = Details(None, ("init",), 0, False)
    proc.put(A, start=2, comm="qbittorrent")
    details.now[A] = Details(None, ("qbittorrent",), 0, False)
    compiled = compile_policy(parse_policy(POLICY, "t"))
    engine = Counting()
    memo = FindingsMemo(engine)
    memo(collector.snapshot(), compiled)
    collector.snapshot()  # someone else's (the policy sync's dry run): the chain is broken for the memo
    memo(collector.snapshot(), compiled)
    assert len(engine.asked) == 1  # same record objects: the identity check still spares the engine
    partial = collector.snapshot_of([A])  # a reaction's snapshot: no delta, one process
    assert [f.process.pid for f in memo(partial, compiled)] == [A] and len(engine.asked) == 1
    assert [f.process.pid for f in memo(collector.snapshot(), compiled)] == [A] and len(engine.asked) == 2
