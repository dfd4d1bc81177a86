"""One enrolled node cannot break the security team's view: every field bounded at the door.

Each body below was a 500 (or a wrong 503) before endpoint_contract/bounds.py; now each is a 4xx
that names the field, on SQLite and on PostgreSQL, and the listings keep working afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import LiveServer, fresh_pg_database, pg_url_or_skip, run_server, written_behind
from tests.support.server_events import agent_event, violation


def nested(depth: int) -> str:
    """A placeholder for an object nested `depth` deep (written as text: json.dumps would recurse)."""
    return f"@nested:{depth}@"


def encode(events: list[dict[str, Any]]) -> str:
    # json.dumps writes a lone surrogate as the \ud800 escape, exactly what a hostile client sends.
    text = json.dumps({"events": events})
    for depth in (255, 600, 900, 989):
        text = text.replace(f'"{nested(depth)}"', '{"a":' * depth + "{}" + "}" * depth)
    return text


# (what, event, the field the answer must name)
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("lone surrogate in extra", violation(extra="\udcff"), "extra"),
    ("lone surrogate in reason", violation(reason="x\ud800"), "reason"),
    ("surrogate in a key", violation(**{"k\ud800": 1}), "key"),
    ("depth 255 in extra", violation(extra=nested(255)), "extra.a"),
    ("depth 900 in extra", violation(extra=nested(900)), "extra.a"),
    # Deeper than the server's JSON parser goes: refused as unparsable (400) before any model runs.
    ("depth 989 in extra", violation(extra=nested(989)), ""),
    ("depth 600 in agent detail", agent_event(detail=nested(600)), "detail.a"),
    ("policy_version 2^63", violation(policy_version=2**63), "policy_version"),
    ("integer 2^70 in extra", violation(big=2**70), "big"),
    ("count 2^64", agent_event(count=2**64), "count"),
    ("detected_at year 1 with an offset", violation(detected_at="0001-01-01T00:00:00+05:00"), "detected_at"),
    (
        "detected_at year 9999 with an offset",
        violation(detected_at="9999-12-31T23:00:00-05:00"),
        "detected_at",
    ),
    ("first_seen year 1", violation(first_seen="0001-01-01T00:30:00+01:00"), "first_seen"),
    ("NUL in reason", violation(reason="a\x00b"), "reason"),
    ("NUL in extra", violation(extra={"x": "a\x00b"}), "extra.x"),
    ("NUL in a key", violation(**{"a\x00": 1}), "key"),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir: Path = tmp_path_factory.mktemp(f"hostile-{request.param}")
    if request.param == "sqlite":
        with run_server(workdir) as live:
            yield live
        return
    with fresh_pg_database(pg_url_or_skip()) as url, run_server(workdir, db_url=url) as live:
        yield live


def post_raw(server: LiveServer, node_key: str, events: list[dict[str, Any]]) -> Any:
    with server.client(node_key) as c:
        return c.post("/events", content=encode(events), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("what", "event", "field"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_event_is_a_4xx_naming_the_field(
    server: LiveServer, what: str, event: dict[str, Any], field: str
) -> None:
    host = server.enroll("ws-hostile")
    r = post_raw(server, host.node_key, [violation(), event])
    if field:
        assert r.status_code == 422, (what, r.status_code, r.text)
        assert field in r.json()["error"], r.text
    else:
        assert r.status_code in (400, 422), (what, r.status_code, r.text)
    # All or nothing: the good event in the same batch was not stored either; the views still work.
    with server.reader() as c:
        for path in ("/violations", "/agent-events", "/hosts", "/summary"):
            assert c.get(path).status_code == 200, path
        stored = c.get("/violations", params={"host": host.host_id}).json()["items"]
    assert stored == []


@pytest.mark.parametrize(
    "since", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00", "99999d"], ids=["y9999", "y1", "days"]
)
def test_out_of_range_query_times_are_400_naming_the_parameter(server: LiveServer, since: str) -> None:
    with server.reader() as c:
        for path in ("/violations", "/agent-events", "/summary"):
            r = c.get(path, params={"since": since})
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"].startswith("since: "), r.text


def test_heartbeat_bounds(server: LiveServer) -> None:
    host = server.enroll("ws-beat")
    with server.client(host.node_key) as c:
        # A 64-bit policy version fits both databases (it was an int4 overflow, a 503, on PostgreSQL).
        assert c.post("/heartbeat", json={"agent_version": "1", "policy_version": 2**40}).status_code == 200
        r = c.post("/heartbeat", json={"agent_version": "1\x00", "mode": "enforce"})
        assert r.status_code == 422 and "agent_version" in r.text
        r = c.post("/heartbeat", json={"agent_version": "1", "last_scan_at": "0001-01-01T00:00:00+05:00"})
        assert r.status_code == 422 and "last_scan_at" in r.text
    with server.reader() as c:
        mine = written_behind(
            lambda: [h for h in c.get("/hosts").json()["items"] if h["host_id"] == host.host_id],
            lambda hosts: hosts[0]["policy_version"] is not None,
        )
    assert mine[0]["policy_version"] == 2**40


def test_enroll_refuses_nul_and_surrogates(server: LiveServer) -> None:
    with server.client(server.enroll_secret) as c:
        for name in ("ws\x00", "ws\udcff"):
            body = json.dumps({"hostname": name, "machine_id": "m-" + name.encode("unicode_escape").decode()})
            r = c.post("/enroll", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
