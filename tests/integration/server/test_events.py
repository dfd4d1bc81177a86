"""Event upload through the real server: limits, validation, idempotency, pagination, filters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.support.server import LiveServer
from tests.support.server_events import agent_event, post, violation


def all_items(server: LiveServer, path: str = "/violations", **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    with server.reader() as c:
        while True:
            page = c.get(path, params=params).json()
            items += page["items"]
            if not page["next_cursor"]:
                return items
            params["cursor"] = page["next_cursor"]


def test_violations_and_agent_events_are_stored_and_listed(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1")
    net = violation(
        rule_id="p2p-ports",
        connection={
            "laddr": "127.0.0.1:6881",
            "raddr": None,
            "proto": "tcp",
            "status": "LISTEN",
            "direction": "listen",
        },
        first_seen="2030-01-01T00:00:00Z",
        last_seen="2030-01-01T00:05:00Z",
        sha256="ab" * 32,  # an extra key the agent adds is kept as sent
    )
    events = [violation(), net, agent_event("circuit_open", detail={"kills": 11}, count=None)]
    r = post(live_server, host, events)
    assert r.status_code == 200
    assert r.json() == {"acked": [e["event_id"] for e in events]}
    items = all_items(live_server)
    assert [i["event_id"] for i in items] == [events[0]["event_id"], net["event_id"]]
    stored = items[1]
    for key in (
        "rule_id",
        "category",
        "action",
        "pid",
        "process_name",
        "exe",
        "username",
        "reason",
        "sha256",
    ):
        assert stored[key] == net[key]
    assert stored["connection"]["laddr"] == "127.0.0.1:6881" and stored["connection"]["direction"] == "listen"
    assert (
        stored["host"] == host.host_id
        and stored["hostname"] == "ws-1"
        and stored["received_at"].endswith("Z")
    )
    (agent,) = all_items(live_server, "/agent-events")
    assert agent["type"] == "circuit_open" and agent["detail"] == {"kills": 11}


def test_retried_batches_are_acknowledged_but_stored_once(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1")
    batch = [violation() for _ in range(5)]
    first = post(live_server, host, batch)
    second = post(live_server, host, [*batch[:3], violation()])
    assert first.status_code == second.status_code == 200
    assert second.json()["acked"][:3] == [e["event_id"] for e in batch[:3]]
    assert len(all_items(live_server)) == 6


def test_a_malformed_event_rejects_the_whole_batch_naming_index_and_field(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1")
    cases = [
        (
            [violation(), violation(), {k: v for k, v in violation().items() if k != "rule_id"}],
            "events[2].rule_id",
        ),
        ([violation(detected_at="2030-01-01T00:00:00")], "events[0].detected_at"),  # no timezone
        ([violation(event_id="not-a-uuid")], "events[0].event_id"),
        ([violation(action="exploded")], "events[0].action"),
        ([violation(pid=-1)], "events[0].pid"),
        ([agent_event(), agent_event(type="Bad Type")], "events[1].type"),
        ([{**violation(), "kind": "gossip"}], "events[0]"),
        ([violation(connection="127.0.0.1:1")], "events[0].connection"),
    ]
    for events, where in cases:
        r = post(live_server, host, events)
        assert r.status_code == 422, where
        assert r.json()["error"].startswith(f"invalid request: {where}"), r.json()
    with live_server.client(host.node_key) as c:
        r = c.post("/events", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "error" in r.json()
        assert c.post("/events", json={"events": [], "extra": 1}).status_code == 422
    assert all_items(live_server) == [] and all_items(live_server, "/agent-events") == []


def test_oversized_batches_are_refused_and_store_nothing(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1")
    too_many = [agent_event(detail={}) for _ in range(501)]
    r = post(live_server, host, too_many)
    assert r.status_code == 413 and "at most 500 events" in r.json()["error"]
    assert post(live_server, host, too_many[:500]).status_code == 200
    assert len(all_items(live_server, "/agent-events", limit=1000)) == 500

    huge = [violation(reason="x" * 8000) for _ in range(140)]  # ~1.2 MB
    r = post(live_server, host, huge)
    assert r.status_code == 413 and "larger than 1048576 bytes" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold on the bytes streamed
        yield b'{"events": ['
        for i in range(200):
            yield (b"," if i else b"") + httpx.Response(200, json=violation(reason="y" * 8000)).content
        yield b"]}"

    with live_server.client(host.node_key) as c:
        r = c.post("/events", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert all_items(live_server) == []


def test_pagination_is_stable_while_events_arrive(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1")
    originals = [violation(rule_id=f"r{i}") for i in range(130)]
    for start in range(0, 130, 50):
        assert post(live_server, host, originals[start : start + 50]).status_code == 200
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 40}
    with live_server.reader() as c:
        while True:
            page = c.get("/violations", params=params).json()
            seen += [i["event_id"] for i in page["items"]]
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
            post(live_server, host, [violation(rule_id="late")])  # arrives mid-listing
        assert seen[:130] == [e["event_id"] for e in originals]
        assert len(seen) == len(set(seen)) == 130 + 3
        assert c.get("/violations", params={"cursor": "garbage"}).status_code == 400
        assert c.get("/violations", params={"limit": 1001}).status_code == 422
        assert c.get("/violations", params={"limit": 0}).status_code == 422


def test_filters(live_server: LiveServer) -> None:
    a, b = live_server.enroll("ws-a"), live_server.enroll("ws-b")
    now = datetime.now(UTC)
    post(live_server, a, [violation(detected_at=(now - timedelta(days=3)).isoformat(), rule_id="old")])
    post(live_server, a, [violation(rule_id="r1", action="reported", category="remote-access")])
    post(live_server, b, [violation(rule_id="r1"), violation(rule_id="r2")])
    post(live_server, b, [agent_event("policy_unsafe"), agent_event("events_dropped")])

    def rules(**params: Any) -> list[str]:
        return sorted(i["rule_id"] for i in all_items(live_server, **params))

    assert rules() == ["old", "r1", "r1", "r2"]
    assert rules(since="24h") == ["r1", "r1", "r2"]
    assert rules(until="2d") == ["old"]
    assert rules(
        since=(now - timedelta(days=4)).isoformat(), until=(now - timedelta(days=2)).isoformat()
    ) == ["old"]
    assert rules(host="ws-b") == ["r1", "r2"]
    assert rules(host=a.host_id) == ["old", "r1"]
    assert rules(rule_id="r1", action="killed") == ["r1"]
    assert rules(category="remote-access") == ["r1"]
    dropped = all_items(live_server, "/agent-events", type="events_dropped")
    assert [e["type"] for e in dropped] == ["events_dropped"] and dropped[0]["count"] == 17
    with live_server.reader() as c:
        r = c.get("/violations", params={"since": "last tuesday"})
        assert r.status_code == 400 and r.json()["error"].startswith("since:")
        summary = c.get("/summary", params={"since": "24h"}).json()
    assert summary["total"] == 3
    assert {(x["rule_id"], x["count"]) for x in summary["by_rule"]} == {("r1", 2), ("r2", 1)}
    assert {(x["hostname"], x["count"]) for x in summary["by_host"]} == {("ws-a", 1), ("ws-b", 2)}
    assert {(x["category"], x["count"]) for x in summary["by_category"]} == {("p2p", 2), ("remote-access", 1)}


def test_forensic_fields_are_kept_and_severity_filters(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-sev")
    forensic = {
        "sha256": "ab" * 32,
        "cmdline": "/usr/bin/qbittorrent --profile=work",
        "ppid": 1812,
        "parent_name": "bash",
        "evidence": [{"attribute": "name", "pattern": "qbittorrent*", "value": "qbittorrent"}],
        "os": "Debian GNU/Linux 13 (trixie)",
        # Claims about who sent it are replaced by what the node key says.
        "hostname": "ceo-laptop",
        "host_id": "not-this-host",
    }
    events = [violation(severity=s, **forensic) for s in ("low", "high", "critical")] + [violation()]
    assert post(live_server, host, events).status_code == 200
    items = all_items(live_server)
    assert sorted(i["severity"] for i in items) == ["critical", "high", "low", "medium"]  # absent: medium
    for item in items[:3]:
        assert {k: item[k] for k in ("sha256", "cmdline", "ppid", "parent_name", "evidence", "os")} == {
            k: forensic[k] for k in ("sha256", "cmdline", "ppid", "parent_name", "evidence", "os")
        }
    assert {(i["host_id"], i["hostname"]) for i in items} == {(host.host_id, "ws-sev")}
    assert [i["severity"] for i in all_items(live_server, severity="high")] == ["high"]
    with live_server.reader() as c:
        bad = c.get("/violations", params={"severity": "urgent"})
    assert bad.status_code == 422 and "severity" in bad.text


def test_text_that_was_not_utf8_is_accepted_escaped_and_bad_forensics_are_named(
    live_server: LiveServer,
) -> None:
    host = live_server.enroll("ws-bytes")
    escaped = violation(exe="/tmp/bad\\xff/qbittorrent", cmdline="qbittorrent caf\\xe9")
    assert post(live_server, host, [escaped]).status_code == 200
    [item] = all_items(live_server, host="ws-bytes")
    assert item["exe"] == "/tmp/bad\\xff/qbittorrent"
    for field, value in (("sha256", "XYZ"), ("severity", "urgent"), ("evidence", [{"attribute": "name"}])):
        response = post(live_server, host, [violation(**{field: value})])
        assert response.status_code == 422 and field in response.json()["error"], response.text


def test_the_summary_is_written_as_its_model_writes_it(live_server: LiveServer) -> None:
    # by_host is written apart from the model (server_stub/routes/reports.py): same text, names
    # that need escaping included.
    from server_stub.models import SummaryOut

    names = ['ws-"quoted"', "ws\\back", "工作站-1", "ws-tab\tx", "ws-\x01", "ws-plain"]
    for i, name in enumerate(names):
        host = live_server.enroll(name)
        post(live_server, host, [violation(rule_id=f"r{j}") for j in range(i + 1)])
    with live_server.reader() as c:
        for params in ({}, {"since": "24h"}, {"rule_id": "r0"}, {"host": "ws-plain"}, {"rule_id": "none"}):
            text = c.get("/summary", params=params).text
            answer = json.loads(text)
            model = SummaryOut.model_validate({"since": None, "until": None, **answer})
            assert text == model.model_dump_json(exclude_none=True), params
            by_host = answer["by_host"]
            if not params or "since" in params:
                assert [(h["hostname"], h["count"]) for h in by_host] == [
                    (name, i + 1) for i, name in reversed(list(enumerate(names)))
                ]
