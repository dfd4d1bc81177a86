"""Mode resolution, plans and dedup (one violation per rule and process instance), on a fake clock."""

from __future__ import annotations

from endpoint_agent.decide import Decider, Deduplicator, Mode, ModeDecision, Plan, resolve_mode
from endpoint_agent.types import Finding, Outcome, ProcessInfo, RuleAction
from tests.support.doubles import FakeClock

ENFORCE = ModeDecision(Mode.ENFORCE, "policy mode is enforce")
MONITOR = ModeDecision(Mode.MONITOR, "policy mode is monitor")


def proc(pid: int = 4242, create_time: float = 1000.5, name: str = "qbittorrent") -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=1, name=name, exe=f"/opt/{name}", create_time=create_time, uid=1000)


def finding(
    p: ProcessInfo | None = None, rule: str = "p2p", action: RuleAction = RuleAction.BLOCK
) -> Finding:
    p = p or proc()
    return Finding(rule_id=rule, category="p2p", action=action, process=p, reason=f"name {p.name!r} matched")


class NoGuard:
    def check(self, proc: ProcessInfo) -> object | None:
        return None


class NameGuard:
    def __init__(self, *names: str) -> None:
        self.names = names

    def check(self, proc: ProcessInfo) -> object | None:
        return f"system component {proc.name!r}" if proc.name in self.names else None


def test_mode_rails_win_over_the_policy() -> None:
    assert resolve_mode("enforce").mode is Mode.ENFORCE
    assert resolve_mode("monitor").mode is Mode.MONITOR
    assert resolve_mode("enforce", break_glass=True) == ModeDecision(Mode.MONITOR, "break-glass file present")
    assert resolve_mode("enforce", circuit_open=True).mode is Mode.MONITOR
    assert "circuit" in resolve_mode("enforce", circuit_open=True).reason
    assert resolve_mode("enforce", enforce_allowed=False).mode is Mode.MONITOR
    # an unknown mode string never means enforce
    assert resolve_mode("ENFORCE!").mode is Mode.MONITOR


def test_plans_by_action_mode_and_protection() -> None:
    clock = FakeClock()
    decider = Decider(NameGuard("sshd"), Deduplicator(clock))
    report = finding(proc(1, name="steam"), rule="games", action=RuleAction.REPORT)
    block = finding(proc(2, name="qbittorrent"))
    protected = finding(proc(3, name="sshd"), rule="remote")
    plans = {d.finding.process.pid: d.plan for d in decider.decide([report, block, protected], ENFORCE)}
    assert plans == {1: Plan.REPORT, 2: Plan.STOP, 3: Plan.PROTECTED}
    plans = {d.finding.process.pid: d.plan for d in decider.decide([report, block, protected], MONITOR)}
    # protected is reported as such in monitor mode too: monitor predicts enforcement truthfully
    assert plans == {1: Plan.REPORT, 2: Plan.WOULD_BLOCK, 3: Plan.PROTECTED}
    decision = decider.decide([protected], ENFORCE)[0]
    assert decision.protection == "system component 'sshd'"


def test_duplicate_findings_in_one_scan_make_one_decision() -> None:
    decider = Decider(NoGuard(), Deduplicator(FakeClock()))
    f = finding()
    assert len(decider.decide([f, f, finding(rule="other")], ENFORCE)) == 2


def test_allow_findings_are_ignored() -> None:
    decider = Decider(NoGuard(), Deduplicator(FakeClock()))
    assert decider.decide([finding(action=RuleAction.ALLOW)], ENFORCE) == []


def test_one_violation_per_process_instance_with_first_and_last_seen() -> None:
    clock = FakeClock()
    dedup = Deduplicator(clock)
    f = finding()
    first = dedup.observe(f, Outcome.REPORTED, 1)
    assert first.record
    start = clock.now()
    for _ in range(10):
        clock.advance(5)
        again = dedup.observe(f, Outcome.REPORTED, 1)
        assert not again.record
        assert again.entry.event_id == first.entry.event_id
    assert again.entry.first_seen == start
    assert (again.entry.last_seen - start).total_seconds() == 50
    # the same PID with another start time is another process: a new violation
    reborn = dedup.observe(finding(proc(create_time=2000.0)), Outcome.REPORTED, 1)
    assert reborn.record and reborn.entry.event_id != first.entry.event_id
    # another rule on the same process: a new violation
    assert dedup.observe(finding(rule="other"), Outcome.REPORTED, 1).record


def test_a_changed_outcome_is_a_new_record_that_keeps_first_seen() -> None:
    clock = FakeClock()
    dedup = Deduplicator(clock)
    f = finding()
    first = dedup.observe(f, Outcome.WOULD_BLOCK, 1)
    clock.advance(60)
    killed = dedup.observe(f, Outcome.KILLED, 2)
    assert killed.record
    assert killed.entry.event_id != first.entry.event_id
    assert killed.entry.first_seen == first.entry.first_seen
    assert killed.entry.policy_version == 2


def test_a_stopped_process_is_not_stopped_again() -> None:
    dedup = Deduplicator(FakeClock())
    decider = Decider(NoGuard(), dedup)
    f = finding()
    dedup.observe(f, Outcome.KILLED, 1)
    # e.g. a zombie still listed in the next snapshot
    assert decider.decide([f], ENFORCE)[0].plan is Plan.ALREADY_STOPPED
    assert not dedup.observe(f, Outcome.KILLED, 1).record


def test_a_failed_kill_is_retried_but_recorded_once() -> None:
    dedup = Deduplicator(FakeClock())
    decider = Decider(NoGuard(), dedup)
    f = finding()
    dedup.observe(f, Outcome.KILL_FAILED, 1)
    assert decider.decide([f], ENFORCE)[0].plan is Plan.STOP
    assert not dedup.observe(f, Outcome.KILL_FAILED, 1).record


def test_changes_flush_new_entries_and_throttle_last_seen() -> None:
    clock = FakeClock()
    dedup = Deduplicator(clock, flush_seconds=60)
    f = finding()
    dedup.observe(f, Outcome.REPORTED, 1)
    live = [(f.process.pid, f.process.create_time)]
    upserts, deletes = dedup.changes(live)
    assert [u.event_id for u in upserts] and deletes == []
    clock.advance(5)
    dedup.observe(f, Outcome.REPORTED, 1)
    assert dedup.changes(live) == ([], [])  # last_seen moved 5 s: kept in memory only
    clock.advance(60)
    dedup.observe(f, Outcome.REPORTED, 1)
    upserts, _ = dedup.changes(live)
    assert len(upserts) == 1 and upserts[0].last_seen == clock.now()


def test_a_process_that_is_gone_is_forgotten_with_its_final_last_seen() -> None:
    clock = FakeClock()
    dedup = Deduplicator(clock)
    f = finding()
    dedup.observe(f, Outcome.REPORTED, 1)
    live = [(f.process.pid, f.process.create_time)]
    dedup.changes(live)
    clock.advance(5)
    dedup.observe(f, Outcome.REPORTED, 1)
    upserts, deletes = dedup.changes([])
    assert [u.last_seen for u in upserts] == [clock.now()]
    assert deletes == [("p2p", f.process.pid, f.process.create_time)]
    assert len(dedup) == 0
    assert dedup.observe(f, Outcome.REPORTED, 1).record  # (only if the very same instance came back)


def test_entries_loaded_from_the_store_suppress_duplicates_after_a_restart() -> None:
    clock = FakeClock()
    before = Deduplicator(clock)
    f = finding()
    entry = before.observe(f, Outcome.REPORTED, 1).entry
    after = Deduplicator(clock, [entry])
    clock.advance(5)
    observed = after.observe(f, Outcome.REPORTED, 1)
    assert not observed.record and observed.entry.event_id == entry.event_id


def test_connection_rules_never_signal_the_process() -> None:
    from dataclasses import replace

    from endpoint_agent.types import Enforce

    decider = Decider(NameGuard("sshd"), Deduplicator(FakeClock()))
    browser = replace(finding(proc(5, name="firefox"), rule="sites"), enforce=Enforce.CONNECTION)
    protected = replace(finding(proc(6, name="sshd"), rule="sites"), enforce=Enforce.CONNECTION)
    plans = {d.finding.process.pid: d.plan for d in decider.decide([browser, protected], ENFORCE)}
    assert plans == {5: Plan.CONNECTION_BLOCKED, 6: Plan.CONNECTION_BLOCKED}
    plans = {d.finding.process.pid: d.plan for d in decider.decide([browser], MONITOR)}
    assert plans == {5: Plan.WOULD_BLOCK}
