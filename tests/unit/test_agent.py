"""One tick end to end with a real policy and a real store; the enforcer and notifier are doubles.

Processes here are records only (PIDs above any real pid_max), so nothing can be signalled.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from endpoint_agent.decide import Mode, ModeDecision
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.enforce.terminate import EnforceResult
from endpoint_agent.errors import CollectError, StoreError
from endpoint_agent.oneshot import enforce_findings
from endpoint_agent.policy import compile_policy, evaluate, parse_policy
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.sync.local import FilePolicyProvider
from endpoint_agent.types import Outcome, ProcessInfo, Snapshot
from tests.support.agent_rig import FAKE_PID, POLICY, Rig, Static, active, proc
from tests.support.doubles import RecordingEnforcer, RecordingNotifier


def test_block_in_enforce_mode_stops_records_and_notifies_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, Static(active(), [proc(1, "qbittorrent"), proc(2, "steam")]))
    result = rig.agent.tick()
    assert result.mode == ModeDecision(Mode.ENFORCE, "policy mode is enforce")
    assert rig.enforcer.pids == [FAKE_PID + 1]
    assert sorted((v["rule_id"], v["action"]) for v in rig.violations()) == [
        ("games", "reported"),
        ("p2p", "killed"),
    ]
    [shown] = rig.notifier.notifications
    assert (shown.username, shown.message, shown.help_url) == (
        "alice", "Peer-to-peer clients are not allowed.", "https://intranet.example.com/aup"
    )  # fmt: skip
    for _ in range(3):
        rig.clock.advance(5)
        assert rig.agent.tick().violations == ()
    assert len(rig.violations()) == 2  # one record per violation, not per scan
    assert rig.enforcer.pids == [FAKE_PID + 1]  # a stopped instance is not stopped again
    assert rig.agent.stops_total == 1


def test_monitor_mode_signals_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, Static(active(mode="monitor"), [proc(1, "qbittorrent")]))
    for _ in range(3):
        rig.agent.tick()
    assert rig.enforcer.calls == []
    assert [v["action"] for v in rig.violations()] == ["would_block"]
    assert rig.notifier.notifications == []


def test_break_glass_forces_monitor_mode_until_removed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, Static(active(), [proc(1, "qbittorrent")]))
    rig.glass_path.write_text("")
    result = rig.agent.tick()
    assert result.mode == ModeDecision(Mode.MONITOR, "break-glass file present")
    assert rig.enforcer.calls == []
    rig.glass_path.unlink()
    rig.agent.tick()
    assert rig.enforcer.pids == [FAKE_PID + 1]
    # the same process instance: a second record only because what was done changed
    assert [v["action"] for v in rig.violations()] == ["would_block", "killed"]


def test_a_protected_process_is_recorded_not_signalled(tmp_path: Path) -> None:
    sshd = ProcessInfo(pid=FAKE_PID + 5, ppid=1, name="sshd", exe=None, uid=0, create_time=5.0)
    rig = Rig(tmp_path, Static(active(), [sshd]))
    rig.agent.tick()
    rig.agent.tick()
    assert rig.enforcer.calls == []
    [v] = rig.violations()
    assert (v["rule_id"], v["action"], v["detail"]) == (
        "remote",
        "protected",
        "protected: system component 'sshd'",
    )


def installed(n: int, name: str) -> ProcessInfo:
    """A distinct installed program (breadth for the circuit breaker), not a user's copy."""
    return dataclasses.replace(proc(n, name), package=f"{name}-pkg")


def test_circuit_breaker_drops_to_monitor_and_keeps_running(tmp_path: Path) -> None:
    static = Static(active(), [installed(i, f"qbittorrent-{i}") for i in range(7)])
    rig = Rig(tmp_path, static, max_kills=5)
    first = rig.agent.tick()
    assert len(rig.enforcer.calls) == 5  # exactly the threshold, then the circuit opens
    assert [e["type"] for e in first.agent_events] == ["circuit_open"]
    actions = [v["action"] for v in rig.violations()]
    assert actions.count("killed") == 5 and actions.count("would_block") == 2
    [event] = rig.store.events(kind="agent")
    assert event.payload["kind"] == "agent" and event.payload["policy_version"] == 1

    static.processes = [installed(i, f"qbittorrent-{i}") for i in range(10, 13)]
    second = rig.agent.tick()  # still running, in monitor mode, still reporting
    assert second.mode is not None and second.mode.mode is Mode.MONITOR
    assert second.agent_events == ()  # reported once
    assert len(rig.enforcer.calls) == 5
    assert rig.agent.status()["circuit"]["open"] is True  # type: ignore[index]

    restarted = rig.make()  # the open circuit survives a restart
    assert restarted.tick().mode.mode is Mode.MONITOR  # type: ignore[union-attr]

    static.policy = active(version=2)  # a new policy version closes it
    static.processes = [proc(20, "qbittorrent-20")]
    third = restarted.tick()
    assert third.mode is not None and third.mode.mode is Mode.ENFORCE
    assert [e["type"] for e in third.agent_events] == ["circuit_closed"]
    assert rig.enforcer.pids[-1] == FAKE_PID + 20


def test_one_users_flood_of_one_blocked_client_is_enforcement_not_a_bad_policy(tmp_path: Path) -> None:
    static = Static(active(), [])
    rig = Rig(tmp_path, static, max_kills=5)
    for i in range(12):  # a new copy every scan, under a name the glob rule matches
        static.processes = [proc(i, f"qbittorrent-copy{i}")]
        result = rig.agent.tick()
        assert result.mode is not None and result.mode.mode is Mode.ENFORCE
        rig.clock.advance(1.5)
    assert len(rig.enforcer.calls) == 12 and rig.store.events(kind="agent") == []


def test_the_circuit_closes_after_its_window_and_both_transitions_are_recorded(tmp_path: Path) -> None:
    static = Static(active(), [installed(i, f"qbittorrent-{i}") for i in range(3)])
    rig = Rig(tmp_path, static, max_kills=2)
    assert rig.agent.tick().agent_events[0]["type"] == "circuit_open"
    rig.clock.advance(600)
    restarted = rig.make(2)  # across a restart too: the persisted state does not keep monitor mode
    static.processes = [installed(5, "qbittorrent-5")]
    result = restarted.tick()
    assert result.mode is not None and result.mode.mode is Mode.ENFORCE
    assert [e["type"] for e in result.agent_events] == ["circuit_closed"]
    assert [e.payload["type"] for e in rig.store.events(kind="agent")] == ["circuit_open", "circuit_closed"]


def test_no_duplicate_after_a_restart(tmp_path: Path) -> None:
    static = Static(active(), [proc(1, "steam"), proc(2, "qbittorrent")])
    rig = Rig(tmp_path, static)
    rig.agent.tick()
    rig.store.close()
    again = Rig(tmp_path, static, store=ViolationStore.open(tmp_path / "violations.sqlite3"))
    again.agent.tick()
    assert sorted(v["rule_id"] for v in again.violations()) == ["games", "p2p"]
    static.processes = [proc(1, "steam", create_time=200.0)]  # a new instance under the same PID
    again.agent.tick()
    assert sorted(v["rule_id"] for v in again.violations()) == ["games", "games", "p2p"]


class FlakyStore(ViolationStore):
    fail_next = False

    def commit_tick(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        if self.fail_next:
            self.fail_next = False
            raise StoreError("violation store: cannot record events: disk I/O error")
        super().commit_tick(*args, **kwargs)  # type: ignore[arg-type]


def test_a_failed_commit_loses_nothing(tmp_path: Path) -> None:
    plain = ViolationStore.open(tmp_path / "violations.sqlite3")
    store = FlakyStore(plain._conn, plain.path, plain._limits, read_only=False)
    static = Static(active(), [proc(1, "steam")])
    rig = Rig(tmp_path, static, store=store)
    store.fail_next = True
    with pytest.raises(StoreError):
        rig.agent.tick()
    assert rig.violations() == []
    assert rig.agent.status()["unsaved_events"] == 1
    rig.agent.tick()
    assert [v["rule_id"] for v in rig.violations()] == ["games"]


def test_a_failed_snapshot_fails_the_tick_and_the_next_one_runs(tmp_path: Path) -> None:
    static = Static(active(), [proc(1, "steam")])
    rig = Rig(tmp_path, static)
    static.fail = CollectError("cannot list processes: /proc not mounted")
    with pytest.raises(CollectError):
        rig.agent.tick()
    assert rig.agent.scan_errors == 1 and "CollectError" in str(rig.agent.last_error)
    static.fail = None
    rig.agent.tick()
    assert rig.agent.last_error is None and len(rig.violations()) == 1


def test_without_a_policy_nothing_is_evaluated(tmp_path: Path) -> None:
    rig = Rig(tmp_path, Static(None, [proc(1, "qbittorrent")]))
    result = rig.agent.tick()
    assert result.policy is None and rig.violations() == []


def test_file_policy_provider_reloads_and_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(mode="monitor", version=1))
    provider = FilePolicyProvider(path)
    assert provider.current().version == 1
    path.write_text(POLICY.format(mode="enforce", version=2))
    assert (provider.current().version, provider.current().mode) == (2, "enforce")
    path.write_text("name: broken\nversion: 3\nrules: [{id: x}]\n")
    assert provider.current().version == 2
    path.unlink()
    assert provider.current().version == 2


def test_enforce_findings_for_a_one_shot_scan() -> None:
    snapshot = Snapshot(
        datetime.now(UTC),
        {
            p.pid: p
            for p in [proc(1, "qbittorrent"), ProcessInfo(FAKE_PID + 2, 1, "sshd", uid=0, create_time=1.0)]
        },
    )
    findings = evaluate(snapshot, compile_policy(parse_policy(POLICY.format(mode="monitor", version=4), "t")))
    enforcer, notifier = RecordingEnforcer(), RecordingNotifier()
    violations = enforce_findings(findings, 4, enforcer=enforcer, guard=Guard(), notifier=notifier)
    assert sorted((v.process_name, v.action) for v in violations) == [
        ("qbittorrent", Outcome.KILLED), ("sshd", Outcome.PROTECTED)
    ]  # fmt: skip
    assert enforcer.pids == [FAKE_PID + 1] and len(notifier.notifications) == 1
    assert all(v.policy_version == 4 for v in violations)
    glass = ModeDecision(Mode.MONITOR, "break-glass file present")
    again = enforce_findings(findings, 4, enforcer=enforcer, guard=Guard(), notifier=notifier, mode=glass)
    assert sorted(v.action for v in again) == [Outcome.PROTECTED, Outcome.WOULD_BLOCK]
    assert enforcer.pids == [FAKE_PID + 1]


class BrokenEnforcer(RecordingEnforcer):
    def terminate(self, proc: ProcessInfo) -> EnforceResult:
        raise RuntimeError("bug")


def test_an_enforcer_bug_is_recorded_as_kill_failed_and_the_scan_completes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, Static(active(), [proc(1, "qbittorrent"), proc(2, "steam")]))
    rig.enforcer = BrokenEnforcer()
    rig.agent = rig.make()
    rig.agent.tick()
    assert sorted((v["rule_id"], v["action"], v.get("detail")) for v in rig.violations()) == [
        ("games", "reported", None),
        ("p2p", "kill_failed", "internal error: RuntimeError"),
    ]
