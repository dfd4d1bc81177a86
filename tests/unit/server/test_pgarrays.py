"""Columns built in one pass (server_stub/store/pgarrays.py) are the arrays psycopg would send,
and PostgreSQL reads back exactly the values given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg.adapt import PyFormat, Transformer

from server_stub.store.pgarrays import Column, floats, ints, texts, times
from tests.support.server import pg_url_or_skip

TEXTS = ["rule-a", None, "é ☃ 𝄞", "rule-a", "", "x" * 5000, None]
TIMES = [
    datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    None,
    datetime(1990, 5, 6, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
]


def _psycopgs(values: list[Any]) -> bytes:
    """What psycopg's own list dumper sends for these values (binary)."""
    dumper = Transformer().get_dumper(values, PyFormat.BINARY).upgrade(values, PyFormat.BINARY)  # type: ignore[attr-defined]
    return bytes(dumper.dump(values))


@pytest.mark.parametrize(
    ("column", "values"),
    [
        (texts(TEXTS), TEXTS),
        (texts(TEXTS, distinct=True), TEXTS),
        (texts(["only"] * 3), ["only"] * 3),
        (times(TIMES), TIMES),
        (ints([0, 1, -(2**63), 2**63 - 1]), [0, 1, -(2**63), 2**63 - 1]),
        (floats([0.0, -1.5, 1e300]), [0.0, -1.5, 1e300]),
    ],
)
def test_a_column_is_the_array_psycopg_would_send(column: Column, values: list[Any]) -> None:
    assert column.data == _psycopgs(values)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        times([datetime(2030, 1, 1)])


@pytest.mark.postgres
def test_postgresql_reads_back_the_values_given() -> None:
    import psycopg

    with psycopg.connect(pg_url_or_skip()) as conn:
        for values in (TEXTS, [None, None], [], ["a"]):
            got = conn.execute(
                "SELECT %(a)b::text[], %(b)b::text[]", {"a": texts(values), "b": texts(values, distinct=True)}
            ).fetchone()
            assert got == (values, values)
        got = conn.execute(
            "SELECT %(t)b::timestamptz[], %(n)b::bigint[], %(f)b::float8[], %(e)b::timestamptz[]",
            {"t": times(TIMES), "n": ints([3, -(2**63)]), "f": floats([0.25]), "e": times([])},
        ).fetchone()
        assert got == (TIMES, [3, -(2**63)], [0.25], [])
