"""Small pure pieces of the HTTP layer: rate limiter, cursors, query times, error messages, config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from endpoint_agent.errors import SettingsError
from server_stub.app import describe_validation_errors
from server_stub.config import ServerConfig
from server_stub.errors import BadRequest
from server_stub.pagination import decode_cursor, encode_cursor
from server_stub.ratelimit import RateLimiter
from server_stub.timeparse import parse_time

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_burst_then_refills_at_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.5)
    assert limiter.acquire("other") == 0.0  # buckets are per key
    clock.t += 0.5
    assert limiter.acquire("k") == 0.0
    clock.t += 100
    assert [limiter.acquire("k") for _ in range(4)][-1] > 0  # refilled only up to the burst


def test_token_bucket_forgets_least_recently_used_keys() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2, clock=clock)
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("c")  # evicts "a"
    assert limiter.acquire("a") == 0.0  # a fresh bucket
    assert limiter.acquire("c") > 0


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(12345)) == 12345
    assert decode_cursor(None) == 0
    for bad in ("x", "!!!", encode_cursor(1)[:-2] + "zz", "ZTE6LTE"):  # last: "e1:-1"
        with pytest.raises(BadRequest, match="cursor"):
            decode_cursor(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2030-05-01T00:00:00Z", datetime(2030, 5, 1, tzinfo=UTC)),
        ("2030-05-01T02:00:00+02:00", datetime(2030, 5, 1, tzinfo=UTC)),
        ("2030-05-01", datetime(2030, 5, 1, tzinfo=UTC)),
        (None, None),
    ],
)
def test_query_times(text: str | None, expected: datetime | None) -> None:
    assert parse_time("since", text, NOW) == expected


def test_bad_query_time_names_the_parameter() -> None:
    with pytest.raises(BadRequest, match="until: 'yesterday'"):
        parse_time("until", "yesterday", NOW)


def test_validation_errors_name_the_event_index_and_field() -> None:
    errors = [
        {"loc": ("body", "events", 3, "violation", "detected_at"), "msg": "Field required"},
        {"loc": ("body", "events", 0, "agent", "detail", "x"), "msg": "bad"},
        {"loc": ("query", "limit"), "msg": "too big"},
    ]
    first, details = describe_validation_errors(errors)
    assert first == "events[3].detected_at: Field required"
    assert [d["loc"] for d in details] == ["events[3].detected_at", "events[0].detail.x", "limit"]


def _config(**overrides: object) -> ServerConfig:
    values: dict[str, object] = {
        "data_dir": Path("/nonexistent"),
        "public_keys": (Ed25519PrivateKey.generate().public_key(),),
        "admin_token": "a" * 20,
        "enroll_secret": "e" * 20,
        "reader_token": "r" * 20,
    }
    values.update(overrides)
    return ServerConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"public_keys": ()}, "--public-key"),
        ({"reader_token": "a" * 20}, "must all differ"),
        ({"stale_after": -1.0}, "--stale-after"),
        ({"rate_limit": 0.0}, "--rate-limit"),
        ({"retention_days": -1.0}, "--retention-days"),
        ({"max_loop_lag": -0.1}, "--max-loop-lag"),
        ({"max_loop_lag": 11.0}, "--max-loop-lag"),
    ],
)
def test_config_is_validated_once_naming_the_flag(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _config(**overrides)


def test_short_secrets_are_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        assert _config(admin_token="short").admin_token == "short"
    assert "--admin-token is shorter than 16 characters" in caplog.text


def test_a_retention_shorter_than_a_report_period_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING"):
        assert _config(retention_days=90.0).retention_days == 90.0
        assert "--retention-days" not in caplog.text
        assert _config(retention_days=7.0).retention_days == 7.0
    assert "--retention-days 7" in caplog.text


def test_reader_token_is_optional() -> None:
    assert _config(reader_token=None).reader_token is None
