"""Several stateless server processes on one PostgreSQL database (ENDPOINT_TEST_PG_URL)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_stub.store.migrations import MIGRATIONS
from tests.support.server import LiveServer, fresh_pg_database, pg_url_or_skip, run_server, secrets_of
from tests.support.server_events import post, violation
from tests.support.server_policies import policy_yaml

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    with fresh_pg_database(pg_url_or_skip()) as url, contextlib.ExitStack() as stack:
        a = stack.enter_context(run_server(tmp_path / "a", db_url=url))
        # The second process trusts the first one's signing key and shares its secrets.
        b = stack.enter_context(
            run_server(
                tmp_path / "b",
                db_url=url,
                public_keys=[a.public_key],
                secrets_env=secrets_of(a),
            )
        )
        yield a, b


def test_servers_share_every_state_through_the_database(two_servers: tuple[LiveServer, LiveServer]) -> None:
    a, b = two_servers
    hosts = [a.enroll(f"ws-{i}") for i in range(20)]
    assert a.publish(policy_yaml(1)).status_code == 200
    assert a.publish(policy_yaml(2), rollout=50).status_code == 200
    assert a.publish(policy_yaml(2)).status_code == 409
    with b.admin() as c:  # b saw a's publications
        assert [v["version"] for v in c.get("/policy/versions").json()["items"]] == [2, 1]
    # b serves policies from memory, following the database's change feed within about a second
    # (server_stub/API.md): wait, bounded, until it serves what a serves.
    deadline = time.monotonic() + 15
    with a.client() as ca, b.client() as cb:
        while any(
            ca.get("/policy", headers=auth).content != cb.get("/policy", headers=auth).content
            for auth in ({"Authorization": f"Bearer {h.node_key}"} for h in hosts)
        ):
            assert time.monotonic() < deadline, "b never served the policies a published"
            time.sleep(0.1)

    # The same host gets the same version, byte for byte, from either process; ETags carry over.
    for h in hosts:
        auth = {"Authorization": f"Bearer {h.node_key}"}
        with a.client() as ca, b.client() as cb:
            ra, rb = ca.get("/policy", headers=auth), cb.get("/policy", headers=auth)
            assert ra.status_code == rb.status_code == 200
            assert ra.content == rb.content and ra.headers["etag"] == rb.headers["etag"]
            assert cb.get("/policy", headers={**auth, "If-None-Match": ra.headers["etag"]}).status_code == 304

    # An upload retried against the other process is stored once.
    batch = [violation() for _ in range(3)]
    assert post(a, hosts[0], batch).status_code == 200
    assert post(b, hosts[0], batch).json()["acked"] == [e["event_id"] for e in batch]
    with b.reader() as c:
        assert len(c.get("/violations").json()["items"]) == 3
        assert len(c.get("/hosts").json()["items"]) == 20

    # Rolling back through one process is what the other serves.
    with b.admin() as c:
        assert c.post("/policy/rollback").status_code == 200
    deadline = time.monotonic() + 15
    with a.client(hosts[0].node_key) as c:
        while c.get("/policy").headers["x-policy-version"] != "1":
            assert time.monotonic() < deadline, "a never served the version b rolled back to"
            time.sleep(0.1)


def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    import subprocess

    import httpx
    import sqlalchemy as sa

    from tests.support.ports import free_ports
    from tests.support.server import make_keys, server_command, stop_server, subprocess_env, wait_healthy

    _, pub = make_keys(tmp_path / "keys")
    env = subprocess_env({"ENDPOINT_SERVER_ADMIN_TOKEN": "a" * 20, "ENDPOINT_SERVER_ENROLL_SECRET": "e" * 20})
    with fresh_pg_database(pg_url_or_skip()) as url:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            ports = free_ports(3)
            for i, port in enumerate(ports):
                log = (tmp_path / f"server-{i}.log").open("wb")
                procs.append(
                    subprocess.Popen(
                        server_command(port, tmp_path / f"d{i}", [pub], url),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=tmp_path,
                    )
                )
                log.close()
            for proc, port in zip(procs, ports, strict=True):
                assert wait_healthy(proc, f"http://127.0.0.1:{port}", timeout=120), [
                    p.read_text() for p in tmp_path.glob("server-*.log")
                ]
            with httpx.Client() as c:
                assert all(
                    c.get(
                        f"http://127.0.0.1:{p}/api/v1/hosts", headers={"Authorization": "Bearer " + "a" * 20}
                    ).status_code
                    == 200
                    for p in ports
                )
        finally:
            for proc in procs:
                stop_server(proc)
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM schema_version")).scalar_one() == len(
                    MIGRATIONS
                )
        finally:
            engine.dispose()
