"""Admin tool pieces: durations, output formats (CSV injection), key files."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from endpoint_admin.client import AdminClient
from endpoint_admin.durations import parse_duration
from endpoint_admin.errors import AdminInputError, AdminServerError
from endpoint_admin.keygen import write_keypair
from endpoint_admin.output import write_hosts, write_violations

ITEM = {
    "event_id": "e1",
    "detected_at": "2030-01-01T00:00:00Z",
    "received_at": "2030-01-01T00:00:01Z",
    "host": "h1",
    "hostname": "ws-1",
    "rule_id": "p2p",
    "category": "p2p",
    "action": "killed",
    "pid": 42,
    "process_name": '=HYPERLINK("http://x")',
    "exe": "/opt/q",
    "username": "bob",
    "policy_version": 3,
    "reason": "line one\nline two",
    "connection": {"laddr": "127.0.0.1:6881", "raddr": None, "proto": "tcp", "status": "LISTEN"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("24h", timedelta(hours=24)),
        ("2w", timedelta(weeks=2)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "-1d", "1y", "1.5h", "99999999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_csv_flattens_connection_and_defuses_formulas() -> None:
    out = io.StringIO()
    assert write_violations([ITEM], "csv", out) == 1
    (row,) = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["process_name"].startswith("'=")
    assert row["laddr"] == "127.0.0.1:6881" and row["proto"] == "tcp" and row["raddr"] == ""
    assert row["pid"] == "42" and row["reason"] == "line one line two"


def test_ndjson_is_one_object_per_line() -> None:
    out = io.StringIO()
    write_violations([ITEM, ITEM], "ndjson", out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == ITEM


def test_table_has_one_line_per_item() -> None:
    out = io.StringIO()
    write_violations([ITEM], "table", out)
    header, line = out.getvalue().splitlines()
    assert header.split()[:3] == ["DETECTED", "HOST", "RULE"]
    assert "ws-1" in line and "killed" in line and "line one line two" in line


def test_hosts_table_marks_stale_hosts() -> None:
    out = io.StringIO()
    write_hosts([{"hostname": "a", "stale": True}, {"hostname": "b", "stale": False}], "table", out)
    lines = out.getvalue().splitlines()
    assert "STALE" in lines[1] and "STALE" not in lines[2]


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = write_keypair(tmp_path)
    with pytest.raises(AdminInputError, match="already exists"):
        write_keypair(tmp_path)
    first.private_key.chmod(0o644)
    second = write_keypair(tmp_path, force=True)
    assert second.key_id != first.key_id
    assert second.private_key.stat().st_mode & 0o777 == 0o600


def test_keygen_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "policy-signing.key").symlink_to(target)
    with pytest.raises(AdminInputError):
        write_keypair(keys, force=True)
    assert target.read_text() == "precious"


def test_table_cells_cannot_carry_terminal_escapes() -> None:
    out = io.StringIO()
    write_violations([{**ITEM, "reason": "evil\x1b]0;pwned\x07", "username": "u\u202eu"}], "table", out)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "evil\\x1b]0;pwned\\x07" in text


def test_client_waits_as_told_on_429_and_reports_server_errors() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "too many requests; retry later"}),
        httpx.Response(200, json={"items": [{"hostname": "a"}]}),
        httpx.Response(409, json={"error": "policy version 1 is not higher"}),
        httpx.Response(502, text="bad gateway"),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    slept: list[float] = []
    client = AdminClient(
        "http://127.0.0.1:1/", "tok", sleep=slept.append, transport=httpx.MockTransport(handler)
    )
    with client:
        assert client.hosts() == [{"hostname": "a"}]
        with pytest.raises(AdminServerError, match="409 policy version 1 is not higher") as conflict:
            client.rollout(5)
        with pytest.raises(AdminServerError, match="502") as gateway:
            client.rollback()
    assert slept == [2.0]
    assert seen[0].headers["authorization"] == "Bearer tok" and seen[0].url.path == "/api/v1/hosts"
    assert conflict.value.exit_code == 2 and gateway.value.exit_code == 1
