"""The kill-rate circuit breaker, on a fake clock."""

from __future__ import annotations

import json

from endpoint_agent.clock import FakeClock
from endpoint_agent.enforce.circuit import Admission, CircuitBreaker, CircuitState


def stop(breaker: CircuitBreaker, version: int = 1) -> Admission:
    admission = breaker.admit(version)
    if admission is Admission.ALLOWED:
        breaker.record_stop(version)
    return admission


def test_trips_exactly_past_the_threshold() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=5, window_seconds=600)
    for _ in range(5):
        assert stop(breaker) is Admission.ALLOWED
        clock.advance(10)
    assert not breaker.is_open(1)
    assert stop(breaker) is Admission.TRIPPED  # the sixth within ten minutes
    assert breaker.is_open(1)
    assert stop(breaker) is Admission.OPEN  # reported once, stays open
    assert breaker.state.opened_at == clock.now()


def test_stops_older_than_the_window_do_not_count() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=5, window_seconds=600)
    for _ in range(5):
        stop(breaker)
    clock.advance(599)
    assert breaker.admit(1) is Admission.TRIPPED  # all five still inside the window

    breaker = CircuitBreaker(clock=clock, max_kills=5, window_seconds=600)
    for _ in range(5):
        stop(breaker)
    clock.advance(600)
    assert stop(breaker) is Admission.ALLOWED  # they just left it
    assert breaker.kills_in_window() == 1


def test_stays_open_for_the_policy_version_and_a_new_version_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=1, window_seconds=60)
    stop(breaker, 3)
    assert stop(breaker, 3) is Admission.TRIPPED
    clock.advance(3600)  # time alone does not close it
    assert breaker.is_open(3)
    assert not breaker.is_open(4)
    assert stop(breaker, 4) is Admission.ALLOWED


def test_state_survives_a_restart() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, max_kills=2)
    stop(breaker, 7)
    stop(breaker, 7)
    stop(breaker, 7)
    saved = json.loads(json.dumps(breaker.state.to_json()))
    restored = CircuitBreaker(clock=clock, max_kills=2, state=CircuitState.from_json(saved))
    assert restored.is_open(7)
    assert restored.admit(7) is Admission.OPEN

    half = CircuitBreaker(clock=clock, max_kills=3)
    stop(half, 7)
    stop(half, 7)
    again = CircuitBreaker(clock=clock, max_kills=3, state=CircuitState.from_json(half.state.to_json()))
    assert stop(again, 7) is Admission.ALLOWED
    assert stop(again, 7) is Admission.TRIPPED  # a restart does not refill the budget


def test_a_damaged_state_record_is_a_closed_circuit() -> None:
    for junk in (None, "x", {"policy_version": "seven"}, {"kills": ["not a date"]}):
        assert CircuitState.from_json(junk) == CircuitState()
