"""`python -m bench fleet` options: one step alone, chosen fleet sizes; bad values are refused."""

from __future__ import annotations

import pytest

from bench import __main__ as bench_main
from bench.fleet import STEPS, chosen_steps, fleet_sizes


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
