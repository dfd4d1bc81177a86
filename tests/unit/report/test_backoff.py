"""Backoff with full jitter and Retry-After, on a fake clock and seeded random generators."""

from __future__ import annotations

import random

import pytest

from endpoint_agent.report.backoff import MAX_RETRY_AFTER, BackoffPolicy, ReportSchedule
from tests.support.doubles import FakeClock


def test_the_window_doubles_up_to_the_cap() -> None:
    policy = BackoffPolicy(base=2.0, cap=60.0)
    assert [policy.window(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.window(10_000) == 60  # no overflow after a very long outage


def test_scaled_to_the_upload_interval() -> None:
    assert BackoffPolicy.for_interval(60) == BackoffPolicy(base=5.0, cap=300.0)
    assert BackoffPolicy.for_interval(0.5) == BackoffPolicy(base=0.5, cap=5.0)
    assert BackoffPolicy.for_interval(3600) == BackoffPolicy(base=5.0, cap=300.0)


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(base=0, cap=10)
    with pytest.raises(ValueError):
        BackoffPolicy(base=10, cap=5)


def test_full_jitter_draws_from_zero_to_the_window() -> None:
    policy, rng = BackoffPolicy(base=1.0, cap=100.0), random.Random(7)
    draws = [policy.delay(5, rng) for _ in range(2000)]
    assert 0 <= min(draws) < 1 and 15 < max(draws) <= 16
    assert 6 < sum(draws) / len(draws) < 10  # uniform: mean about half the window


def test_retry_after_is_a_floor_with_jitter_on_top() -> None:
    policy, rng = BackoffPolicy(base=1.0, cap=100.0), random.Random(3)
    draws = [policy.delay(3, rng, retry_after=30.0) for _ in range(500)]
    assert all(30.0 <= d <= 34.0 for d in draws)
    assert max(draws) - min(draws) > 3.0
    assert policy.delay(1, rng, retry_after=1e9) <= MAX_RETRY_AFTER + 1.0
    assert 0 <= policy.delay(1, rng, retry_after=-5) <= 1.0


def test_a_fleet_does_not_come_back_at_once() -> None:
    """100 agents fail together (same outage, same Retry-After): their retries spread over the window."""
    clock = FakeClock()
    agents = [ReportSchedule(60, clock=clock, rng=random.Random(seed), first_within=0) for seed in range(100)]
    for failures in range(4):
        waits = sorted(s.failed(retry_after=10.0) for s in agents)
        window = agents[0].policy.window(failures + 1)
        assert waits[0] >= 10.0
        assert waits[-1] - waits[0] > 0.8 * window  # spread over the whole window, not bunched
        per_second: dict[int, int] = {}
        for w in waits:
            per_second[int(w)] = per_second.get(int(w), 0) + 1
        assert max(per_second.values()) < 100 * 0.5  # never half the fleet in the same second


def test_schedule_first_round_comes_within_the_first_interval() -> None:
    clock = FakeClock()
    firsts = []
    for seed in range(20):
        s = ReportSchedule(60, clock=clock, rng=random.Random(seed))
        firsts.append(s.seconds_until_due())
    assert all(0 <= f <= 60.0 for f in firsts) and len(set(firsts)) == 20
    assert max(firsts) - min(firsts) > 30  # spread over the interval, not bunched at the start


def test_schedule_steady_interval_backoff_and_reset() -> None:
    clock = FakeClock()
    s = ReportSchedule(60, clock=clock, rng=random.Random(1), first_within=0)
    assert s.due()
    s.succeeded()
    assert 54 <= s.seconds_until_due() <= 66 and not s.due()
    clock.advance(66)
    assert s.due()

    wait = s.failed(retry_after=None)
    assert s.failures == 1 and 0 <= wait <= 5 and s.seconds_until_due() == pytest.approx(wait)
    wait = s.failed(retry_after=20)
    assert s.failures == 2 and 20 <= wait <= 30
    clock.advance(19.9)
    assert not s.due()
    clock.advance(wait - 19.9)
    assert s.due()
    s.succeeded(more=True)  # work left: at once
    assert s.failures == 0 and s.due()
