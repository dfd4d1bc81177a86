"""Push export from the real server (uvicorn) to real receivers on 127.0.0.1.

Syslog (RFC 5424 + CEF) over UDP, TCP and TLS, parsed strictly; OCSF JSON lines in a rotated file,
validated against the vendored part of the OCSF schema (tests/data/ocsf); webhooks verified by
HMAC with replays refused, and a Slack-text variant with a filter. An outage: the receiver is down
while 1,000 violations arrive, and every one is delivered once it is back. /healthz shows the
sinks' health throughout.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from server_stub.export.sinks import sign
from tests.support.receivers import SyslogReceiver, WebhookReceiver
from tests.support.server import LiveServer, run_server
from tests.support.tls import make_tls

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "data/ocsf/detection_finding.schema.json").read_text()
)
SHA = "ab" * 32


def violation(i: int, **over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "kind": "violation",
        "event_id": str(uuid.uuid4()),
        "detected_at": datetime.now(UTC).isoformat(),
        "rule_id": "p2p-qbittorrent",
        "category": "p2p",
        "severity": "high",
        "action": "killed",
        "pid": 4000 + i,
        "process_name": "qbittorrent",
        "exe": "/opt/qbt/qbittorrent",
        "sha256": SHA,
        "cmdline": "qbittorrent --profile=a|b key=value\nsecond line",
        "ppid": 1200,
        "parent_name": "bash",
        "username": "alice",
        "evidence": [{"attribute": "name", "pattern": "qbittorrent", "value": "qbittorrent"}],
        "reason": f"process name 'qbittorrent' matched rule p2p-qbittorrent ({i})",
        "policy_version": 3,
        "os": "linux",
    }
    v.update(over)
    return v


def upload(server: LiveServer, node_key: str, events: list[dict[str, Any]]) -> None:
    with server.client(node_key) as client:
        for start in range(0, len(events), 500):
            answer = client.post("/events", json={"events": events[start : start + 500]})
            assert answer.status_code == 200, answer.text


def wait_for(what: Callable[[], bool], timeout: float = 60.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out: {message}")
        time.sleep(0.1)


def health(server: LiveServer) -> dict[str, Any]:
    with server.client() as client:
        body: dict[str, Any] = client.get("/healthz").json()
    return body.get("export", {})


@pytest.fixture
def exporting(tmp_path: Path) -> Iterator[Callable[[list[dict[str, Any]]], LiveServer]]:
    """Start a server whose config file has these sinks (fast polling, no settle delay)."""
    started: list[Any] = []

    def start(sinks: list[dict[str, Any]]) -> LiveServer:
        config = tmp_path / "server.yaml"
        config.write_text(
            yaml.safe_dump({"export": {"poll_interval": 0.1, "settle_seconds": 0, "sinks": sinks}})
        )
        ctx = run_server(tmp_path / "server", extra_args=["--config", str(config)])
        server = ctx.__enter__()
        started.append(ctx)
        return server

    yield start
    for ctx in started:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_syslog_cef_arrives_parsed_strictly(transport: str, tmp_path: Path, exporting: Any) -> None:
    tls = make_tls(tmp_path / "tls") if transport == "tls" else None
    receiver = SyslogReceiver(transport, cert=tls.cert if tls else None, key=tls.key if tls else None).start()
    try:
        sink: dict[str, Any] = {"name": "soc", "type": "syslog", "host": "127.0.0.1", "port": receiver.port}
        sink["transport"] = transport
        if tls:
            sink["ca_file"] = str(tls.ca)
        server = exporting([sink])
        host = server.enroll("ws-cef")
        events = [violation(i) for i in range(20)]
        upload(server, host.node_key, events)
        wait_for(lambda: len(receiver.received()) >= 20, message=f"{len(receiver.received())}/20 messages")
        assert receiver.errors == []
        got = receiver.received()
        assert {m.cef_extension()["externalId"] for m in got} == {e["event_id"] for e in events}
        first = got[0]
        assert first.hostname == "ws-cef" and first.app == "endpoint-agent" and first.msgid == "violation"
        assert first.pri == 13 * 8 + 3  # log audit, severity high -> error
        header = first.cef_header()
        assert header[0] == "CEF:0" and header[4] == "p2p-qbittorrent" and header[6] == "8"
        ext = first.cef_extension()
        assert ext["suser"] == "alice" and ext["sproc"] == "qbittorrent" and ext["fileHash"] == SHA
        assert ext["act"] == "killed" and ext["cs1"] == "p2p-qbittorrent" and ext["cs1Label"] == "rule_id"
        assert ext["cs2"] == "qbittorrent --profile=a|b key=value\nsecond line"  # escaped, then restored
        assert ext["deviceExternalId"] == host.host_id and ext["cn1"] == "1200"
        assert health(server)["soc"]["state"] == "ok"
    finally:
        receiver.stop()


def test_ocsf_file_is_valid_rotated_and_private(tmp_path: Path, exporting: Any) -> None:
    path = tmp_path / "export" / "ocsf.jsonl"
    sink = {"name": "ocsf", "type": "file", "path": str(path), "max_bytes": 64 * 1024, "backups": 50}
    server = exporting([sink])
    host = server.enroll("ws-ocsf")
    conn = {"laddr": "10.0.0.5:50001", "raddr": "203.0.113.9:6881", "proto": "tcp", "status": "ESTABLISHED"}
    events = [violation(i) for i in range(150)] + [violation(999, connection={**conn, "domain": "t.example"})]
    upload(server, host.node_key, events)

    def lines() -> list[dict[str, Any]]:
        out = []
        for f in sorted(path.parent.glob("ocsf.jsonl*")):
            out += [json.loads(line) for line in f.read_text().splitlines()]
        return out

    wait_for(lambda: len(lines()) >= len(events), message="OCSF lines")
    files = sorted(path.parent.glob("ocsf.jsonl*"))
    assert len(files) > 1, "rotation by size"
    assert all(f.stat().st_size <= 64 * 1024 for f in files)
    assert all((f.stat().st_mode & 0o777) == 0o600 for f in files)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    findings = lines()
    for finding in findings:
        errors = sorted(validator.iter_errors(finding), key=str)
        assert not errors, f"{errors[0].json_path}: {errors[0].message}"
    assert {f["finding_info"]["uid"] for f in findings} == {e["event_id"] for e in events}
    one = next(f for f in findings if f["evidences"][0].get("dst_endpoint"))
    assert one["evidences"][0]["dst_endpoint"] == {"ip": "203.0.113.9", "port": 6881, "domain": "t.example"}
    assert one["severity_id"] == 4 and one["disposition_id"] == 2 and one["device"]["hostname"] == "ws-ocsf"
    assert one["evidences"][0]["process"]["file"]["hashes"][0]["value"] == SHA


def test_webhook_signed_replay_refused_filter_and_slack(tmp_path: Path, exporting: Any) -> None:
    secret = secrets.token_hex(24)
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    hook = WebhookReceiver(secret).start()
    slack = WebhookReceiver(secret).start()
    try:
        server = exporting(
            [
                {"name": "hook", "type": "webhook", "url": hook.url, "secret_file": str(secret_file)},
                {
                    "name": "chat", "type": "webhook", "url": slack.url, "format": "slack",
                    "secret_file": str(secret_file),
                    "filter": {"min_severity": "critical", "actions": ["killed"]},
                },
            ]
        )  # fmt: skip
        host = server.enroll("ws-hook")
        events = [violation(i) for i in range(10)] + [violation(10, severity="critical")]
        upload(server, host.node_key, events)
        wait_for(lambda: len(hook.accepted) >= 11 and len(slack.accepted) >= 1, message="webhooks")
        assert {e["event_id"] for e in hook.accepted} == {e["event_id"] for e in events}
        assert hook.accepted[0]["host_id"] == host.host_id and hook.accepted[0]["hostname"] == "ws-hook"
        time.sleep(1.0)
        assert len(slack.accepted) == 1, slack.accepted  # only the critical one passes the filter
        assert slack.accepted[0]["text"].startswith("[CRITICAL] p2p-qbittorrent on ws-hook: qbittorrent")
        # A replayed delivery (same timestamp and signature) is refused by the receiver.
        body = json.dumps(events[0]).encode()
        stamp = str(int(time.time()))
        headers = {"X-Endpoint-Timestamp": stamp, "X-Endpoint-Signature": sign(secret, stamp, body)}
        assert httpx.post(hook.url, content=body, headers=headers).status_code == 204
        assert httpx.post(hook.url, content=body, headers=headers).status_code == 401
        assert hook.rejected == ["replayed"]
        bad = {"X-Endpoint-Timestamp": stamp, "X-Endpoint-Signature": sign("wrong" * 5, stamp, body)}
        assert httpx.post(hook.url, content=body, headers=bad).status_code == 401
    finally:
        hook.stop()
        slack.stop()


def test_outage_then_every_violation_delivered(tmp_path: Path, exporting: Any) -> None:
    secret = secrets.token_hex(24)
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(secret)
    os.chmod(secret_file, 0o600)
    receiver = SyslogReceiver("tcp").start()
    port = receiver.port
    receiver.stop()  # down before anything is sent
    hook = WebhookReceiver(secret).start()
    hook.fail_with = 503  # up but failing
    try:
        server = exporting(
            [
                {"name": "soc", "type": "syslog", "host": "127.0.0.1", "port": port, "max_backoff": 1},
                {"name": "hook", "type": "webhook", "url": hook.url, "secret_file": str(secret_file),
                 "max_backoff": 1},
            ]
        )  # fmt: skip
        host = server.enroll("ws-outage")
        events = [violation(i) for i in range(1000)]
        upload(server, host.node_key, events)
        wait_for(lambda: health(server).get("soc", {}).get("state") == "retrying", message="soc retrying")
        state = health(server)
        assert state["soc"]["ok"] is False and state["soc"]["lag"] >= 1 and state["soc"]["last_error"]
        assert state["hook"]["state"] == "retrying" and "503" in state["hook"]["last_error"]
        back = SyslogReceiver("tcp", port=port).start()
        hook.fail_with = None
        try:
            ids = {e["event_id"] for e in events}
            wait_for(
                lambda: {m.cef_extension()["externalId"] for m in back.received()} >= ids,
                timeout=120,
                message="syslog catch-up",
            )
            wait_for(
                lambda: {e["event_id"] for e in hook.accepted} >= ids, timeout=120, message="webhook catch-up"
            )
            assert len(hook.accepted) == len(ids)  # nothing twice after the receiver came back
            wait_for(lambda: health(server)["soc"]["lag"] == 0, message="lag back to 0")
            assert health(server)["soc"]["state"] == "ok"
        finally:
            back.stop()
    finally:
        hook.stop()
