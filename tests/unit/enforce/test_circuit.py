"""The circuit breaker measures breadth (distinct targets), not the number of stops; on a fake clock."""

from __future__ import annotations

import json
from datetime import timedelta

from endpoint_agent.enforce.circuit import Admission, CircuitBreaker, CircuitState, StopTarget
from endpoint_agent.types import ProcessInfo
from tests.support.doubles import FakeClock

NOBODY = 65534


def process(name: str, exe: str, uid: int | None = NOBODY, package: str | None = None) -> ProcessInfo:
    return ProcessInfo(pid=4242, ppid=1, name=name, exe=exe, uid=uid, package=package)


def packaged(name: str, uid: int = 1000) -> StopTarget:
    return StopTarget.of("bad", process(name, f"/usr/bin/{name}", uid, package="coreutils"))


def stop(breaker: CircuitBreaker, target: StopTarget, version: int = 1) -> Admission:
    admission = breaker.admit(version, target)
    if admission is Admission.ALLOWED:
        breaker.record_stop(version, target)
    return admission


def test_a_flood_of_one_users_copies_of_one_blocked_binary_never_trips_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=5, window_seconds=600)
    copies = [
        process("qbittorrent", f"/tmp/c{i}/qbittorrent") for i in range(50)  # copies of sleep in /tmp
    ] + [
        process(f"qbittorrent{i}", f"/home/x/q{i}") for i in range(50)  # renamed, for a glob rule
    ] + [
        process("qbittorrent", "/usr/bin/sleep", package="coreutils")  # a symlink to a packaged binary
    ]  # fmt: skip
    for p in copies:
        assert stop(breaker, StopTarget.of("p2p", p)) is Admission.ALLOWED
        clock.advance(1.5)
    assert not breaker.is_open(1)
    assert breaker.breadth() == 1 and breaker.kills_in_window() == len(copies)
    assert breaker.take_transitions() == []


def test_many_distinct_programs_trip_it_exactly_past_the_threshold() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=5, window_seconds=600)
    names = ["sleep", "tail", "cat", "yes", "sort"]
    for name in names:
        assert stop(breaker, packaged(name)) is Admission.ALLOWED
        assert stop(breaker, packaged(name)) is Admission.ALLOWED  # again: no breadth added
        clock.advance(10)
    assert stop(breaker, packaged("head")) is Admission.TRIPPED  # the sixth distinct program
    assert stop(breaker, packaged("sleep")) is Admission.OPEN  # once open, nothing is stopped
    [event] = breaker.take_transitions()
    assert event["type"] == "circuit_open" and event["policy_version"] == 1
    detail = event["detail"]
    assert isinstance(detail, dict) and detail["breadth"] == 6 and detail["max_kills"] == 5
    assert [t["program"] for t in detail["targets"]] == [f"/usr/bin/{n}" for n in [*names, "head"]]


def test_distinct_users_and_system_accounts_are_breadth() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=5)
    for uid in (1000, 1001, 1002, 1003, 1004):  # one client, five users
        assert stop(breaker, StopTarget.of("p2p", process("qbittorrent", "/opt/q", uid))) is Admission.ALLOWED
    assert stop(breaker, StopTarget.of("p2p", process("qbittorrent", "/opt/q", 1005))) is Admission.TRIPPED

    breaker = CircuitBreaker(clock=clock, max_kills=2)
    # A system account's programs are never collapsed, unpackaged and renamed as they may be.
    daemon = StopTarget.of("bad", process("cupsd", "/opt/cupsd", uid=0))
    assert daemon.program == "/opt/cupsd" and StopTarget.of("bad", process("x", "/x", uid=None)).program
    assert stop(breaker, daemon) is Admission.ALLOWED
    assert stop(breaker, StopTarget.of("bad", process("dbus", "/opt/dbus", uid=101))) is Admission.ALLOWED
    assert stop(breaker, StopTarget.of("bad", process("cron", "/opt/cron", uid=0))) is Admission.TRIPPED


def test_it_closes_after_its_window_and_says_so() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=1, window_seconds=60)
    stop(breaker, packaged("sleep"))
    assert stop(breaker, packaged("tail")) is Admission.TRIPPED
    clock.advance(59)
    assert breaker.is_open(1)
    clock.advance(1)
    assert not breaker.is_open(1)
    opened, closed = breaker.take_transitions()
    assert (opened["type"], closed["type"]) == ("circuit_open", "circuit_closed")
    assert "60s passed" in str(closed["detail"])
    assert stop(breaker, packaged("cat")) is Admission.ALLOWED  # a fresh window


def test_a_new_policy_version_closes_it_and_says_so() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=1, window_seconds=600)
    stop(breaker, packaged("sleep"), 3)
    assert stop(breaker, packaged("tail"), 3) is Admission.TRIPPED
    assert not breaker.is_open(4)
    assert [e["type"] for e in breaker.take_transitions()] == ["circuit_open", "circuit_closed"]
    assert stop(breaker, packaged("tail"), 4) is Admission.ALLOWED


def test_state_survives_a_restart_but_not_past_its_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=2, window_seconds=600)
    for name in ("sleep", "tail", "cat"):
        stop(breaker, packaged(name), 7)
    saved = json.loads(json.dumps(breaker.state.to_json()))
    restored = CircuitBreaker(
        clock=clock, max_kills=2, window_seconds=600, state=CircuitState.from_json(saved)
    )
    assert restored.admit(7, packaged("yes")) is Admission.OPEN  # a restart does not reopen enforcement

    clock.advance(600)  # the machine was down for the rest of the window
    later = CircuitBreaker(clock=clock, max_kills=2, window_seconds=600, state=CircuitState.from_json(saved))
    assert not later.is_open(7)  # persisted state does not keep monitor mode forever
    [closed] = later.take_transitions()
    assert closed["type"] == "circuit_closed"

    half = CircuitBreaker(clock=clock, max_kills=2)
    stop(half, packaged("sleep"), 7)
    again = CircuitBreaker(clock=clock, max_kills=2, state=CircuitState.from_json(half.state.to_json()))
    assert stop(again, packaged("tail"), 7) is Admission.ALLOWED
    assert stop(again, packaged("cat"), 7) is Admission.TRIPPED  # a restart does not refill the budget


def test_an_opening_in_the_future_counts_from_now() -> None:
    clock = FakeClock()
    future = CircuitState(policy_version=1, opened_at=clock.now() + timedelta(days=365))
    breaker = CircuitBreaker(clock=clock, window_seconds=60, state=future)
    assert breaker.is_open(1)
    clock.advance(60)
    assert not breaker.is_open(1)  # not a year of monitor mode after the clock was set back


def test_the_state_stays_small_under_a_flood() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=5)
    target = StopTarget.of("p2p", process("qbittorrent", "/tmp/q"))
    for _ in range(5000):
        stop(breaker, target)
    assert len(json.dumps(breaker.state.to_json())) < 64 * 1024


def test_a_damaged_state_record_is_a_closed_circuit() -> None:
    for junk in (None, "x", {"policy_version": "seven"}, {"stops": ["not a date"]}, {"targets": [{"x": 1}]}):
        assert CircuitState.from_json(junk) == CircuitState()
