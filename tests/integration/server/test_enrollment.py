"""One host's identity cannot be taken with the shared enroll secret (the real server).

The first enrollment binds the machine id; enrolling it again needs its current node key (a
rotation) or an admin's reset (audited); per-rollout enroll tokens count their uses and expire.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import httpx

from server_stub.store.engine import SQLITE_FILE
from tests.support.server import EnrolledHost, LiveServer, subprocess_env
from tests.support.server_events import post, violation


def enroll(
    server: LiveServer, secret: str, hostname: str, machine_id: str, node_key: str | None = None
) -> httpx.Response:
    body = {"hostname": hostname, "machine_id": machine_id}
    if node_key is not None:
        body["node_key"] = node_key
    with server.client(secret) as c:
        return c.post("/enroll", json=body)


def admin_cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env({"ENDPOINT_ADMIN_TOKEN": server.admin_token})
    return subprocess.run(
        [sys.executable, "-m", "endpoint_admin", *args, "--server", server.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def hostnames(server: LiveServer, host_id: str) -> list[str]:
    with server.reader() as c:
        items = c.get("/violations", params={"host": host_id}).json()["items"]
    return [i["hostname"] for i in items]


def test_a_second_host_with_the_secret_cannot_take_over_a_machine_id(live_server: LiveServer) -> None:
    victim = live_server.enroll("ws-victim")
    assert post(live_server, victim, [violation()]).status_code == 200
    r = enroll(live_server, live_server.enroll_secret, "evil", victim.machine_id)
    assert r.status_code == 409 and "node_key" in r.json()["error"], r.text
    r = enroll(live_server, live_server.enroll_secret, "evil", victim.machine_id, node_key="guessed")
    assert r.status_code == 409
    # The victim keeps its key, its name and its history.
    assert post(live_server, victim, [violation()]).status_code == 200
    assert hostnames(live_server, victim.host_id) == ["ws-victim", "ws-victim"]


def test_rotation_with_the_current_key_keeps_the_host(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-rotate")
    r = enroll(live_server, live_server.enroll_secret, "ws-rotate-2", host.machine_id, node_key=host.node_key)
    assert r.status_code == 200, r.text
    new_key = r.json()["node_key"]
    assert r.json()["host_id"] == host.host_id and new_key != host.node_key
    assert post(live_server, host, [violation()]).status_code == 401  # the old key stopped working
    rotated = EnrolledHost(host.host_id, new_key, "ws-rotate-2", host.machine_id)
    assert post(live_server, rotated, [violation()]).status_code == 200


def test_admin_reset_then_reenroll_works_and_is_audited(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-lost")
    done = admin_cli(live_server, "hosts", "reset", "ws-lost")
    assert done.returncode == 0, done.stderr
    assert host.host_id in done.stdout
    assert post(live_server, host, [violation()]).status_code == 401  # the old key is gone at once
    r = enroll(live_server, live_server.enroll_secret, "ws-found", host.machine_id)
    assert r.status_code == 200 and r.json()["host_id"] == host.host_id, r.text
    # Opened once: a further enroll without the new key is refused again.
    assert enroll(live_server, live_server.enroll_secret, "evil", host.machine_id).status_code == 409
    with live_server.reader() as c:
        actions = [(e["action"], e["target"]) for e in c.get("/audit").json()["items"]]
    assert ("host_reset", f"host {host.host_id}") in actions
    assert admin_cli(live_server, "hosts", "reset", "no-such-host").returncode != 0


def test_enroll_tokens_count_uses_and_are_not_the_admin_token(live_server: LiveServer) -> None:
    done = admin_cli(live_server, "enroll-token", "create", "--expires", "7d", "--uses", "2")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token and "2 hosts" in done.stderr
    for n in range(2):
        r = enroll(live_server, token, f"ws-token-{n}", uuid.uuid4().hex)
        assert r.status_code == 200, r.text
    assert enroll(live_server, token, "ws-token-3", uuid.uuid4().hex).status_code == 401  # used up
    with live_server.client(token) as c:
        assert c.get("/hosts").status_code in (401, 403)  # a token only enrolls
    with live_server.client(live_server.reader_token) as c:
        assert c.post("/enroll-tokens", json={"expires_in": 3600, "uses": 1}).status_code == 403


def test_an_expired_token_is_refused(live_server: LiveServer) -> None:
    with live_server.admin() as c:
        r = c.post("/enroll-tokens", json={"expires_in": 60, "uses": 5})
    assert r.status_code == 200
    token, expires_at = r.json()["token"], datetime.fromisoformat(r.json()["expires_at"])
    assert expires_at > datetime.now(UTC)
    # Expire it in the database (the server has no test clock): the same state a week later.
    db = sqlite3.connect(live_server.data_dir / SQLITE_FILE)
    try:
        with db:
            db.execute("UPDATE enroll_tokens SET expires_at = '2000-01-01 00:00:00.000000'")
    finally:
        db.close()
    assert enroll(live_server, token, "ws-late", uuid.uuid4().hex).status_code == 401
