"""The agent-facing hot paths of the real server: memory, not database; overload answered at once.

- a node key reset or rotated through one server stops working on a second server process that
  shares the database, within the change feed's bound (server_stub/watcher.py);
- a policy poll (304 or 200) and a heartbeat run no SQL statement (uvicorn in this process, so
  the engine's statements can be counted);
- heartbeats and contact times are written behind, and a stopping server writes what it holds;
- past --max-in-flight requests in progress, 503 + Retry-After at once; /healthz still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from server_stub.store import Store
from tests.support.inprocess_server import InProcessServer, in_process_server
from tests.support.server import (
    API,
    LiveServer,
    database_url,
    run_server,
    stop_server,
)
from tests.support.server_policies import policy_yaml

# The documented bound is about 1-2 s (poll interval plus one query); the deadline only keeps a
# broken build from hanging, it is not what the test measures.
DEADLINE = 20.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


def _eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _status(server: LiveServer, token: str) -> int:
    with server.client(token) as c:
        return c.get("/policy").status_code


def test_a_reset_key_stops_working_on_another_server(tmp_path: Path, shared_db: str) -> None:
    with (
        run_server(tmp_path / "a", db_url=shared_db) as a,
        run_server(tmp_path / "b", db_url=shared_db, public_keys=[a.public_key]) as b,
    ):
        assert a.publish(policy_yaml(1)).status_code == 200
        host = a.enroll("ws-1")
        # B sees the policy A published at its next read of the feed (the same ~1 s bound).
        assert _eventually(lambda: _status(b, host.node_key) == 200)
        assert _status(b, host.node_key) == 200  # the key, looked up once, is now held in memory
        with a.admin() as c:
            assert c.post(f"/hosts/{host.host_id}/reset").status_code == 200
        assert _status(a, host.node_key) == 401  # the server that reset it: at once
        assert _eventually(lambda: _status(b, host.node_key) == 401)
        # Enrolled again (through B), rotated (through A): B refuses each old key, takes each new one.
        again = b.enroll("ws-1", machine_id=host.machine_id)
        assert _status(b, again.node_key) == 200
        rotated = a.enroll("ws-1", machine_id=host.machine_id, node_key=again.node_key)
        assert _eventually(lambda: _status(b, again.node_key) == 401)
        assert _status(b, rotated.node_key) == 200 and _status(a, rotated.node_key) == 200


# --- in this process: the engine's statements can be counted ---------------------------------


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[InProcessServer]:
    with in_process_server(tmp_path) as server:
        yield server


def test_polls_and_heartbeats_run_no_sql(in_process: InProcessServer) -> None:
    in_process.publish(1)
    enrolled = in_process.enroll("ws-1")
    with in_process.client(enrolled["node_key"]) as c:
        first = c.get("/policy")  # the key's one lookup
        assert first.status_code == 200
        etag = first.headers["etag"]
        assert any("node_key_hash" in sql for sql in in_process.request_statements())  # it counts
        in_process.statements.clear()
        for _ in range(50):
            assert c.get("/policy", headers={"If-None-Match": etag}).status_code == 304
            assert c.get("/policy").content == first.content
            beat = {"agent_version": "7.7", "mode": "enforce", "counters": {"queue_pending": 5}}
            assert c.post("/heartbeat", json=beat).status_code == 200
        assert in_process.request_statements() == []
    # What the heartbeats said is written by the flush, in one batch.
    assert _stored_agent_version(in_process.config.data_dir, enrolled["host_id"]) is None
    in_process.app.state.ctx.activity.flush()
    stored = in_process.store.hosts.get(enrolled["host_id"])
    assert stored is not None and stored.agent_version == "7.7" and stored.counters == {"queue_pending": 5}


def test_a_stopping_server_writes_what_it_holds(tmp_path: Path) -> None:
    with run_server(tmp_path / "s", extra_args=["--write-behind", "60"]) as server:
        host = server.enroll("ws-1")
        with server.client(host.node_key) as c:
            assert c.post("/heartbeat", json={"agent_version": "3.1", "mode": "audit"}).status_code == 200
        assert _stored_agent_version(server.data_dir, host.host_id) is None  # next flush: in a minute
        stop_server(server.process)  # SIGTERM: uvicorn shuts down, then re-raises the signal
    store = Store.open(f"sqlite:///{server.data_dir / 'endpoint-server.db'}")
    try:
        record = store.hosts.get(host.host_id)
        assert record is not None and record.agent_version == "3.1" and record.mode == "audit"
    finally:
        store.close()


def _stored_agent_version(data_dir: Path, host_id: str) -> str | None:
    """What the database holds, read past the server (its listings write what it holds first)."""
    engine = sa.create_engine(f"sqlite:///{data_dir / 'endpoint-server.db'}")
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT agent_version FROM hosts WHERE host_id = :h")
            return conn.execute(query, {"h": host_id}).scalar_one()  # type: ignore[no-any-return]
    finally:
        engine.dispose()


def test_a_listing_shows_what_its_process_holds(tmp_path: Path) -> None:
    with run_server(tmp_path / "s", extra_args=["--write-behind", "60"]) as server:
        host = server.enroll("ws-1")
        with server.client(host.node_key) as c:
            assert c.post("/heartbeat", json={"agent_version": "5.0", "mode": "enforce"}).status_code == 200
        assert _stored_agent_version(server.data_dir, host.host_id) is None
        with server.reader() as c:
            mine = [h for h in c.get("/hosts").json()["items"] if h["host_id"] == host.host_id]
        assert mine[0]["agent_version"] == "5.0"
        assert _stored_agent_version(server.data_dir, host.host_id) == "5.0"


def test_heartbeats_reach_the_database_within_the_flush_interval(tmp_path: Path) -> None:
    with run_server(tmp_path / "s") as server:
        host = server.enroll("ws-1")
        with server.client(host.node_key) as c:
            assert c.post("/heartbeat", json={"agent_version": "4.2", "mode": "enforce"}).status_code == 200

        assert _eventually(lambda: _stored_agent_version(server.data_dir, host.host_id) == "4.2")


def _hold_a_request(server: LiveServer, token: str) -> socket.socket:
    """A request admitted and in progress: its body announced, never sent."""
    port = int(server.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        (
            f"POST {API}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        ).encode()
    )
    return sock


class _Held:
    """`n` requests held in progress (_hold_a_request). One answered at once -- refused 503 while
    the test's own earlier requests still held the slots, or the loop lagged, on a loaded machine --
    is sent again by `renew`, so the slots end up held by these."""

    def __init__(self, server: LiveServer, token: str, n: int) -> None:
        self.server, self.token = server, token
        self.socks = [_hold_a_request(server, token) for _ in range(n)]

    def renew(self) -> None:
        for i, sock in enumerate(self.socks):
            if select.select([sock], [], [], 0)[0]:  # answered (and closed): not held
                sock.close()
                self.socks[i] = _hold_a_request(self.server, self.token)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def test_overload_is_refused_at_once_with_retry_after(tmp_path: Path) -> None:
    args = ["--max-in-flight", "2", "--body-timeout", "120"]
    with run_server(tmp_path / "s", extra_args=args) as server:
        host = server.enroll("ws-1")
        server.publish(policy_yaml(1))
        with contextlib.closing(_Held(server, host.node_key, 2)) as held:
            with server.reader() as c:
                answers: list[httpx.Response] = []

                def refused() -> bool:
                    held.renew()
                    answers.append(c.get("/hosts"))
                    return answers[-1].status_code == 503

                assert _eventually(refused)
                r = answers[-1]
                assert r.headers["retry-after"] == "2"
                assert "busy" in r.json()["error"]
            with server.client(host.node_key) as c:
                # A poll and a heartbeat answered from memory hold no slot: answered past the cap.
                assert c.get("/policy").status_code == 200
                assert c.post("/heartbeat", json={"agent_version": "1"}).status_code == 200
                # An upload goes on to the application: refused before its body is read, and the
                # connection closed.
                r = c.post("/events", json={"events": []})
                assert r.status_code == 503 and r.headers["connection"] == "close"
            with httpx.Client(base_url=server.api_url, timeout=30) as c:
                assert c.get("/healthz").status_code == 200  # never refused
        # The held requests gone, everything is answered again; the refusals were counted.
        with server.reader() as c:
            assert _eventually(lambda: c.get("/hosts").status_code == 200)
        with server.client(server.reader_token) as c:
            text = c.get(server.base_url + "/metrics").text
        refused = {
            s.labels["reason"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "endpoint_server_requests_refused_total"
        }
        assert refused["overload"] >= 2


async def _flood(port: int, request: bytes, count: int) -> list[bytes]:
    """`count` connections at once, one request each; the head of each answer (b"" if none)."""

    async def one() -> bytes:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return b""
        try:
            writer.write(request)
            await writer.drain()
            return await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError):
            return b""
        finally:
            writer.close()

    # The deadline only keeps a broken build from hanging; answers come at once.
    async with asyncio.timeout(DEADLINE * 3):
        return await asyncio.gather(*(one() for _ in range(count)))


def test_a_flood_past_the_cap_is_answered_503_not_left_waiting(tmp_path: Path) -> None:
    args = ["--max-in-flight", "2", "--body-timeout", "120"]
    with run_server(tmp_path / "s", extra_args=args) as server:
        host = server.enroll("ws-1")
        server.publish(policy_yaml(1))
        port = int(server.base_url.rsplit(":", 1)[1])
        # A listing goes on to the application (a poll answered from memory would be answered).
        listing = (
            f"GET {API}/hosts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.reader_token}\r\n\r\n"
        ).encode()
        with contextlib.closing(_Held(server, host.node_key, 2)) as held:
            # The held requests are admitted once the server has read their headers.
            last: list[bytes] = []

            def refused() -> bool:
                held.renew()
                last[:] = asyncio.run(_flood(port, listing, 1))
                return last[0].startswith(b"HTTP/1.1 503")

            assert _eventually(refused), last
            heads = asyncio.run(_flood(port, listing, 300))
        assert all(h.startswith(b"HTTP/1.1 503") and b"\r\nretry-after: 2\r\n" in h for h in heads), {
            h.split(b"\r\n", 1)[0] for h in heads
        }


@pytest.mark.parametrize("quiet", [False, True])
def test_no_access_log_leaves_out_the_line_per_request(tmp_path: Path, quiet: bool) -> None:
    args = ["--log-level", "info", *(["--no-access-log"] if quiet else [])]
    with run_server(tmp_path / "s", extra_args=args) as server:
        host = server.enroll("ws-1")
        with server.client(host.node_key) as c:
            assert c.get("/policy").status_code == 404
        # uvicorn writes the line before the answer: it is in the log once the answer is here.
        logged = f'"GET {API}/policy HTTP/1.1" 404' in server.log()
        assert logged is not quiet
        assert "Application startup complete" in server.log()  # the rest of the log is kept


def test_a_started_server_holds_the_fleets_keys_before_their_first_poll(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from server_stub.auth import hash_node_key, new_node_key
    from server_stub.store import sqlite_url

    (tmp_path / "data").mkdir()
    store = Store.open(sqlite_url(tmp_path / "data"))
    keys = []
    for i in range(3):  # enrolled before this server started (another server, or before a restart)
        keys.append(new_node_key())
        store.hosts.enroll(
            machine_id=f"m-{i}",
            hostname=f"ws-{i}",
            node_key_hash=hash_node_key(keys[-1]),
            now=datetime.now(UTC),
        )
    store.close()
    with in_process_server(tmp_path) as server:
        server.publish(1)
        held = server.app.state.ctx.auth.keys
        assert _eventually(lambda: len(held) == 3)  # read in one query, beside serving
        server.statements.clear()
        for key in keys:
            with server.client(key) as c:
                assert c.get("/policy").status_code == 200
        assert not any("node_key_hash" in sql for sql in server.request_statements())
        # The held keys still follow a reset at once.
        with server.client(server.config.admin_token) as c:
            host_id = c.get("/hosts").json()["items"][0]["host_id"]
            assert c.post(f"/hosts/{host_id}/reset").status_code == 200
        statuses = []
        for key in keys:
            with server.client(key) as c:
                statuses.append(c.get("/policy").status_code)
        assert sorted(statuses) == [200, 200, 401]
