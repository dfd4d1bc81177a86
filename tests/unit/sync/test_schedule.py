"""The poll schedule and loop with a fake clock and a controlled random source: no sleeps."""

from __future__ import annotations

import random

import pytest

from endpoint_agent.errors import ServerRejected, ServerUnavailable
from endpoint_agent.sync.schedule import BACKOFF_MAX, PollLoop, PollSchedule
from tests.support.doubles import FakeClock


class Extremes(random.Random):
    """uniform() returns the low or the high end, as told: the bounds of every draw are checked exactly."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_first_poll_is_due_at_once_then_every_interval_with_20_percent_jitter() -> None:
    clock = FakeClock()
    low = PollSchedule(60, clock=clock, rng=Extremes(high=False))
    high = PollSchedule(60, clock=clock, rng=Extremes(high=True))
    assert low.due()
    assert low.succeeded() == pytest.approx(48.0)
    assert high.succeeded() == pytest.approx(72.0)
    clock.advance(47.9)
    assert not low.due()
    clock.advance(0.1)
    assert low.due()


def test_jitter_actually_spreads_agents() -> None:
    delays = {
        round(PollSchedule(60, clock=FakeClock(), rng=random.Random(seed)).succeeded(), 3)
        for seed in range(20)
    }
    assert len(delays) == 20 and all(48 <= d <= 72 for d in delays)


def test_backoff_doubles_up_to_15_minutes_with_full_jitter() -> None:
    clock = FakeClock()
    top = PollSchedule(60, clock=clock, rng=Extremes(high=True))
    caps = [top.failed() for _ in range(10)]
    assert caps == [10, 20, 40, 80, 160, 320, 640, 900, 900, 900]
    assert BACKOFF_MAX == 900
    bottom = PollSchedule(60, clock=clock, rng=Extremes(high=False))
    assert bottom.failed() == 1.0  # full jitter draws from [0, cap]; a small floor avoids a busy loop
    many = PollSchedule(60, clock=clock, rng=random.Random(1))
    draws = [many.failed() for _ in range(200)]
    assert max(draws) <= 900 and min(draws) >= 1.0 and len(set(draws)) > 150


def test_a_success_resets_the_backoff() -> None:
    s = PollSchedule(60, clock=FakeClock(), rng=Extremes(high=True))
    s.failed()
    s.failed()
    assert s.failures == 2
    s.succeeded()
    assert s.failures == 0
    assert s.failed() == 10


def test_retry_after_is_a_floor_spread_upwards() -> None:
    low = PollSchedule(60, clock=FakeClock(), rng=Extremes(high=False))
    assert low.failed(retry_after=120) == 120
    s = PollSchedule(60, clock=FakeClock(), rng=Extremes(high=True))
    assert s.failed(retry_after=120) == pytest.approx(120 * 1.2)  # never all agents in the same second
    assert s.failed(retry_after=1) == 20  # the backoff draw is longer than what the server asked


def test_short_intervals_back_off_from_the_interval() -> None:
    s = PollSchedule(1, clock=FakeClock(), rng=Extremes(high=True))
    assert [s.failed() for _ in range(4)] == [1, 2, 4, 8]


def test_the_loop_polls_only_when_due_and_survives_every_failure() -> None:
    clock = FakeClock()
    results: list[Exception | None] = [
        ServerUnavailable("down", retry_after=30),
        ServerRejected("forbidden", 403),
        RuntimeError("bug"),
        None,
    ]
    calls: list[float] = []

    def poll() -> None:
        calls.append(clock.monotonic())
        outcome = results.pop(0)
        if outcome is not None:
            raise outcome

    schedule = PollSchedule(60, clock=clock, rng=Extremes(high=False))
    loop = PollLoop(poll, schedule)
    assert loop.run_due() is True  # at once
    assert schedule.seconds_until_due() == 30  # Retry-After honoured
    assert loop.run_due() is False
    clock.advance(30)
    assert loop.run_due() is True and schedule.failures == 2
    clock.advance(schedule.seconds_until_due())
    assert loop.run_due() is True and schedule.failures == 3  # an unexpected error is a failure too
    clock.advance(schedule.seconds_until_due())
    assert loop.run_due() is True and schedule.failures == 0
    assert schedule.seconds_until_due() == pytest.approx(48)
    assert len(calls) == 4


def test_invalid_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        PollSchedule(0, clock=FakeClock(), rng=random.Random())
    with pytest.raises(ValueError, match="jitter"):
        PollSchedule(60, clock=FakeClock(), rng=random.Random(), jitter=1.5)
