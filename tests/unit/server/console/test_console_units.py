"""The console's pure parts: lock-out schedule, CSRF comparison, password hashes, SVG escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server_stub.console import charts
from server_stub.console.auth import ConsoleDenied, check_csrf
from server_stub.console.passwords import (
    FREE_FAILURES,
    MAX_DELAY,
    check_new_password,
    hash_password,
    lockout_until,
    verify_password,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_lockout_waits_grow_after_the_free_failures_and_are_capped() -> None:
    assert all(lockout_until(n, NOW) is None for n in range(FREE_FAILURES))
    waits = [lockout_until(n, NOW) - NOW for n in range(FREE_FAILURES, FREE_FAILURES + 12)]  # type: ignore[operator]
    assert waits[0] == timedelta(seconds=30) and waits[1] == timedelta(seconds=60)
    assert waits == sorted(waits) and max(waits) == MAX_DELAY


def test_password_hash_is_argon2id_and_verifies_only_the_password() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$") and "correct" not in stored
    assert verify_password(stored, "correct horse battery")
    assert not verify_password(stored, "correct horse batterY")
    assert not verify_password("not a hash", "anything")
    assert check_new_password("short") and check_new_password("x" * 2000)
    assert check_new_password("long enough pass") is None


@pytest.mark.parametrize("presented", [None, "", "wrong", 17, "tok" + "\udcff"])
def test_csrf_mismatch_is_refused(presented: object) -> None:
    with pytest.raises(ConsoleDenied, match="security token"):
        check_csrf("tok", presented)
    with pytest.raises(ConsoleDenied):
        check_csrf(None, "tok")
    check_csrf("tok", "tok")


def test_chart_labels_are_escaped_and_bars_stack() -> None:
    days = charts.days_between(NOW.date(), (NOW + timedelta(days=2)).date())
    keys = ["<script>x</script>", "b&b"]
    counts = {(days[0], keys[0]): 3, (days[0], keys[1]): 2, (days[2], keys[1]): 1}
    svg = charts.stacked_bars(days, counts, keys, charts.colours(keys), title='t"<')
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "b&amp;b" in svg
    assert svg.count("<rect") == 3
    legend = charts.legend([charts.Series(k, "#000", 1) for k in keys])
    assert "<script>" not in legend
    assert charts.stacked_bars(days, {}, [], {}, title="empty").startswith("<svg")
