"""`python -m bench fleet` options: one step alone, chosen fleet sizes; bad values are refused."""

from __future__ import annotations

import pytest

from bench import __main__ as bench_main
from bench.fleet import (
    FAILED,
    HELD,
    REFINE_CLOSE,
    SIM_LAGGED,
    STEPS,
    between,
    chosen_steps,
    descend,
    fleet_sizes,
    refine,
)


def test_steps_are_chosen_in_the_order_given() -> None:
    assert chosen_steps("overload, poll") == ["overload", "poll"]
    assert chosen_steps(",".join(STEPS)) == list(STEPS)


@pytest.mark.parametrize("text", ["", ",", "poll,warp", "Poll"])
def test_an_unknown_or_empty_step_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="--fleet-steps"):
        chosen_steps(text)


def test_fleet_sizes_are_sorted_and_bounded() -> None:
    assert fleet_sizes(None, 100) is None
    assert fleet_sizes("40_000,20000,20000", 50_000) == [20_000, 40_000]
    for bad in ("0", "10,x", "60000"):
        with pytest.raises(ValueError, match="--fleet-hosts"):
            fleet_sizes(bad, 50_000)


def test_a_bad_step_stops_the_bench_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any server starts: exit status 2 and the reason.
    assert bench_main.main(["fleet", "--fleet-steps", "poll,warp"]) == 2
    err = capsys.readouterr().err
    assert "warp" in err and "poll,enroll,ingest,steady,overload" in err


def test_the_steady_ramp_is_refined_between_the_size_that_held_and_the_one_that_did_not() -> None:
    """After a doubling ramp held at 21,652 hosts and not at 43,304, sizes between are tried: one
    that holds raises the lower bound, one that does not -- failed or inconclusive alike, as
    neither is known to hold -- lowers the upper one, within the number of tries."""
    limit = 33_000  # the (unknown to the bench) largest fleet that holds
    asked: list[tuple[int, int, int]] = []

    def measure(size: int, held: int, failed: int) -> str:
        asked.append((size, held, failed))
        return HELD if size <= limit else FAILED

    got = refine(21_652, 43_304, measure, tries=5)
    sizes = [size for size, _ in got]
    assert all(held < size < failed for size, held, failed in asked)  # always strictly between
    assert [verdict for _, verdict in got] == [HELD if n <= limit else FAILED for n in sizes]
    largest = max(n for n, v in got if v == HELD)
    smallest_miss = min(n for n, v in got if v != HELD)
    assert largest <= limit < smallest_miss <= largest * REFINE_CLOSE  # narrowed down to within 15 %
    assert refine(21_652, 43_304, measure, tries=1) == got[:1]  # the tries bound the runs
    assert refine(30_000, 33_000, measure, tries=5) == []  # already close: nothing to try


def test_an_inconclusive_size_is_never_reported_as_held() -> None:
    got = refine(10_000, 40_000, lambda size, held, failed: SIM_LAGGED, tries=3)
    assert got and all(verdict == SIM_LAGGED for _, verdict in got)
    assert [size for size, _ in got] == sorted((size for size, _ in got), reverse=True)  # only lower


def test_a_first_size_that_did_not_hold_is_halved_until_one_holds() -> None:
    """The first size (guessed from the 304 rate) lagged the simulator: smaller fleets are measured,
    halving, and the descent stops at the first that held -- or after `tries`, or at the least."""
    holds_below = 20_000
    asked: list[tuple[int, int]] = []

    def measure(size: int, failed: int) -> str:
        asked.append((size, failed))
        return HELD if size <= holds_below else SIM_LAGGED

    got = descend(52_737, measure, tries=3)
    assert got == [(26_400, SIM_LAGGED), (13_200, HELD)]
    assert asked == [(26_400, 52_737), (13_200, 26_400)]  # each below the last that did not hold
    assert descend(52_737, measure, tries=1) == got[:1]  # the tries bound the runs
    assert descend(52_737, lambda size, failed: FAILED, tries=10, least=5_000) == [
        (26_400, FAILED), (13_200, FAILED), (6_600, FAILED),
    ]  # fmt: skip
    assert descend(800, measure, tries=3, least=500) == []  # never below the least


def test_sizes_between_are_round_and_strictly_inside() -> None:
    assert between(21_652, 43_304) == 30_600
    assert between(100, 300) == 200 and between(10, 30) == 17
    assert between(1_000, 1_100) is None and between(4, 5, close=1.0) is None
