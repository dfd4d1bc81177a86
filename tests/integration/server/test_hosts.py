"""Hosts: enrolment and key rotation, heartbeats, the stale flag, rate limits, server flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.server import REPO_ROOT, LiveServer, make_keys, run_server, subprocess_env, written_behind


def test_heartbeat_is_visible_in_hosts(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1", machine_id="machine-1")
    beat = {
        "agent_version": "0.3.1",
        "policy_version": 4,
        "mode": "enforce",
        "last_scan_at": "2030-01-01T00:00:00Z",
        "counters": {"scans": 10, "findings": 2, "kills": 1, "dropped_events": 0, "policy_rejections": 1},
        "circuit_state": "closed",
        "future_field": "ignored",
    }
    with live_server.client(host.node_key) as c:
        assert c.post("/heartbeat", json=beat).json() == {"status": "ok"}
        assert c.post("/heartbeat", json={**beat, "counters": {"scans": -1}}).status_code == 422
        assert c.post("/heartbeat", json={"mode": "enforce"}).status_code == 422
    with live_server.reader() as c:
        (item,) = written_behind(
            lambda: c.get("/hosts").json()["items"], lambda items: bool(items[0]["agent_version"])
        )
    assert (
        item["host_id"] == host.host_id and item["hostname"] == "ws-1" and item["machine_id"] == "machine-1"
    )
    assert (item["agent_version"], item["policy_version"], item["mode"]) == ("0.3.1", 4, "enforce")
    assert item["counters"]["kills"] == 1 and item["circuit_state"] == "closed"
    assert item["stale"] is False and item["last_seen"] is not None


def test_reenrolling_a_machine_rotates_its_key_and_keeps_its_id(live_server: LiveServer) -> None:
    first = live_server.enroll("ws-1", machine_id="machine-1")
    second = live_server.enroll("ws-1-renamed", machine_id="machine-1", node_key=first.node_key)
    assert second.host_id == first.host_id and second.node_key != first.node_key
    with live_server.client(first.node_key) as c:
        assert c.post("/heartbeat", json={"agent_version": "1"}).status_code == 401
    with live_server.client(second.node_key) as c:
        assert c.post("/heartbeat", json={"agent_version": "1"}).status_code == 200
    with live_server.reader() as c:
        hosts = c.get("/hosts").json()["items"]
    assert [(h["host_id"], h["hostname"]) for h in hosts] == [(first.host_id, "ws-1-renamed")]
    with live_server.client(live_server.enroll_secret) as c:
        assert c.post("/enroll", json={"hostname": "", "machine_id": "m"}).status_code == 422


def test_hosts_silent_longer_than_stale_after_are_stale(tmp_path: Path) -> None:
    # --stale-after 0: any host is stale as soon as it has been silent at all.
    with run_server(tmp_path / "s", extra_args=["--stale-after", "0"]) as server:
        host = server.enroll("ws-1")
        with server.client(host.node_key) as c:
            c.post("/heartbeat", json={"agent_version": "1"})
        with server.reader() as c:
            assert [h["stale"] for h in c.get("/hosts").json()["items"]] == [True]


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with run_server(tmp_path / "s", extra_args=["--rate-limit", "0.001", "--rate-burst", "3"]) as server:
        with server.reader() as c:
            codes = [c.get("/hosts").status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            r = c.get("/hosts")
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert r.json() == {"error": "too many requests; retry later"}
            assert c.get("/healthz").status_code == 200  # liveness is never limited
        with server.admin() as c:  # another credential has its own bucket
            assert c.get("/hosts").status_code == 200


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server_stub", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=subprocess_env(env),
    )


def test_bad_server_flags_fail_with_one_line(tmp_path: Path) -> None:
    _, pub = make_keys(tmp_path / "keys")
    good = {"ENDPOINT_SERVER_ADMIN_TOKEN": "a" * 20, "ENDPOINT_SERVER_ENROLL_SECRET": "e" * 20}
    base = ["--port", "1", "--data-dir", str(tmp_path / "d")]
    cases = [
        (base, good, "--public-key"),
        ([*base, "--public-key", str(tmp_path / "nope.pub")], good, "not found"),
        ([*base, "--public-key", str(pub)], {**good, "ENDPOINT_SERVER_ADMIN_TOKEN": ""}, "--admin-token"),
        ([*base, "--public-key", str(pub), "--enroll-secret", "a" * 20], good, "must all differ"),
        ([*base, "--public-key", str(pub), "--db", "mysql://u:hunter2@h/db"], good, "unsupported database"),
        (["--port", "x"], good, "--port"),
    ]
    for args, env, message in cases:
        result = _serve(args, {"ENDPOINT_SERVER_READER_TOKEN": "", **env})
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "hunter2" not in result.stderr
