"""Many enrollments at once (the real server, SQLite and PostgreSQL): they are written together
(server_stub/enrollbatch.py) and each still gets exactly what a lone enrollment gets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from server_stub.store.engine import SQLITE_FILE, normalize_url
from tests.support.inprocess_server import in_process_server
from tests.support.poison import poison_hostname
from tests.support.server import (
    LiveServer,
    fresh_pg_database,
    pg_url_or_skip,
    run_server,
    secrets_of,
    written_behind,
)

Body = dict[str, str]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_and_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgres":
            url = stack.enter_context(fresh_pg_database(pg_url_or_skip()))
        server = stack.enter_context(run_server(tmp_path / "server", db_url=url))
        yield server, url or f"sqlite:///{server.data_dir / SQLITE_FILE}"


def enroll_all(server: LiveServer, bodies: list[Body]) -> list[httpx.Response]:
    """Every body POSTed to /enroll at the same time, each on its own connection."""
    return enroll_at_once([(server, body) for body in bodies])


def enroll_at_once(requests: list[tuple[LiveServer, Body]]) -> list[httpx.Response]:
    """Each (server, body) POSTed to that server's /enroll, all at the same time."""

    async def run() -> list[httpx.Response]:
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str, httpx.AsyncClient] = {}
            for server, _ in requests:
                if server.api_url not in clients:
                    clients[server.api_url] = await stack.enter_async_context(
                        httpx.AsyncClient(
                            base_url=server.api_url,
                            headers={"Authorization": f"Bearer {server.enroll_secret}"},
                            limits=httpx.Limits(max_connections=len(requests)),
                            timeout=60,
                        )
                    )
            calls = (clients[server.api_url].post("/enroll", json=body) for server, body in requests)
            return list(await asyncio.gather(*calls))

    return asyncio.run(run())


def key_works(server: LiveServer, node_key: str) -> bool:
    """A node key the server knows gets past authentication (404: no policy published yet)."""
    with server.client(node_key) as c:
        status = c.get("/policy").status_code
    assert status in (401, 404), status
    return status == 404


def stored_machines(url: str) -> dict[str, str]:
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return dict(conn.exec_driver_sql("SELECT machine_id, host_id FROM hosts").all())
    finally:
        engine.dispose()


def test_distinct_machines_enrolling_together_all_get_their_own_working_key(
    server_and_db: tuple[LiveServer, str],
) -> None:
    server, url = server_and_db
    bodies = [{"hostname": f"ws-{n}", "machine_id": uuid.uuid4().hex} for n in range(60)]
    answers = enroll_all(server, bodies)
    assert [a.status_code for a in answers] == [200] * len(bodies), [a.text for a in answers][:3]
    keys = [a.json()["node_key"] for a in answers]
    host_ids = [a.json()["host_id"] for a in answers]
    assert len(set(keys)) == len(keys) and len(set(host_ids)) == len(host_ids)
    assert stored_machines(url) == {b["machine_id"]: h for b, h in zip(bodies, host_ids, strict=True)}
    assert all(key_works(server, k) for k in keys)


def test_one_machine_rotating_its_key_many_times_at_once_ends_with_one_key(
    server_and_db: tuple[LiveServer, str],
) -> None:
    server, _url = server_and_db
    host = server.enroll("ws-busy")
    body = {"hostname": "ws-busy", "machine_id": host.machine_id, "node_key": host.node_key}
    answers = enroll_all(server, [body] * 20)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * 19, statuses  # only the first still held the current key
    (winner,) = [a.json() for a in answers if a.status_code == 200]
    assert winner["host_id"] == host.host_id
    assert key_works(server, winner["node_key"])
    assert not key_works(server, host.node_key)  # the old key stopped working


def test_a_batch_the_database_refuses_answers_503_and_stores_none_of_it(
    server_and_db: tuple[LiveServer, str],
) -> None:
    server, url = server_and_db
    poison_hostname(url, "poison")
    bodies = [{"hostname": f"ws-{n}", "machine_id": uuid.uuid4().hex} for n in range(40)]
    bodies[20] = {"hostname": "poison", "machine_id": uuid.uuid4().hex}
    answers = enroll_all(server, bodies)
    stored = stored_machines(url)
    assert answers[20].status_code == 503
    for body, answer in zip(bodies, answers, strict=True):
        if answer.status_code == 200:  # in a batch without the poisoned row: stored, and it works
            assert stored[body["machine_id"]] == answer.json()["host_id"]
            assert key_works(server, answer.json()["node_key"])
        else:  # in its batch: the answer a failed write always gets, and nothing of it stored
            assert answer.status_code == 503, answer.text
            assert answer.json() == {"error": "database unavailable; retry later"}
            assert answer.headers["Retry-After"] == "5"
            assert body["machine_id"] not in stored
    # The next enrollment is written as usual.
    assert key_works(server, server.enroll("ws-after").node_key)


# A media type the layer in front of the route leaves to the route (server_stub/enrollserve.py):
# the same request sent both ways must get the same answer.
ROUTE_ONLY = "application/vnd.endpoint+json"
ODD_BODIES = [
    b'{"hostname": "ws"}',
    b'{"hostname": "ws", "machine_id": "m", "extra": 1}',
    b'{"hostname": 7, "machine_id": "m"}',
    b'{"hostname": "", "machine_id": "m"}',
    b'{"hostname": "ws\\u0000", "machine_id": "m"}',
    b'{"hostname": "ws\\ud800", "machine_id": "m"}',
    b'{"hostname": "' + b"a" * 300 + b'", "machine_id": "m"}',
    b'{"hostname": ',
    b"[1]",
    b"",
]


def test_the_fast_layer_and_the_route_answer_alike(live_server: LiveServer) -> None:
    def post(content_type: str, body: bytes) -> httpx.Response:
        with live_server.client(live_server.enroll_secret) as c:
            return c.post("/enroll", content=body, headers={"Content-Type": content_type})

    for body in ODD_BODIES:
        fast, routed = post("application/json", body), post(ROUTE_ONLY, body)
        assert (fast.status_code, fast.json()) == (routed.status_code, routed.json()), body
        assert fast.status_code in (400, 422), fast.text
    host = live_server.enroll("ws-known")
    again = json.dumps({"hostname": "ws-evil", "machine_id": host.machine_id}).encode()
    fast, routed = post("application/json", again), post(ROUTE_ONLY, again)
    assert fast.status_code == routed.status_code == 409 and fast.json() == routed.json()
    for content_type in ("application/json", ROUTE_ONLY):
        new = json.dumps({"hostname": "ws-new", "machine_id": uuid.uuid4().hex}).encode()
        answer = post(content_type, new)
        assert answer.status_code == 200 and sorted(answer.json()) == ["host_id", "node_key"]
        assert key_works(live_server, answer.json()["node_key"])


@pytest.mark.postgres
def test_two_servers_enrolling_the_same_machines_at_once_bind_each_once(tmp_path: Path) -> None:
    with fresh_pg_database(pg_url_or_skip()) as url, contextlib.ExitStack() as stack:
        a = stack.enter_context(run_server(tmp_path / "a", db_url=url))
        b = stack.enter_context(
            run_server(tmp_path / "b", db_url=url, public_keys=[a.public_key], secrets_env=secrets_of(a))
        )
        # Each new machine sent to both servers at once: one of them binds it, the other refuses.
        bodies = [{"hostname": f"ws-{n}", "machine_id": uuid.uuid4().hex} for n in range(30)]
        answers = enroll_at_once([(server, body) for body in bodies for server in (a, b)])
        stored = stored_machines(url)
        for n, body in enumerate(bodies):
            pair = answers[2 * n : 2 * n + 2]
            assert sorted(r.status_code for r in pair) == [200, 409], [r.text for r in pair]
            (winner,) = [r.json() for r in pair if r.status_code == 200]
            assert stored[body["machine_id"]] == winner["host_id"]
            assert key_works(a, winner["node_key"]) and key_works(b, winner["node_key"])
        # One machine rotating its key on both servers at once: exactly one rotation wins.
        host = a.enroll("ws-busy")
        assert key_works(b, host.node_key)  # b holds the old key in memory now
        body = {"hostname": "ws-busy", "machine_id": host.machine_id, "node_key": host.node_key}
        answers = enroll_at_once([(server, body) for server in (a, b) for _ in range(10)])
        assert sorted(r.status_code for r in answers) == [200] + [409] * 19
        (winner,) = [r.json() for r in answers if r.status_code == 200]
        assert key_works(a, winner["node_key"]) and key_works(b, winner["node_key"])
        for server in (a, b):  # the old key stops on both (b: told by the change feed)
            assert not written_behind(partial(key_works, server, host.node_key), lambda ok: not ok)


def test_enrollments_the_writer_cannot_take_are_answered_503_at_once(tmp_path: Path) -> None:
    with in_process_server(tmp_path) as server:
        assert server.enroll("ws-before")["node_key"]
        server.app.state.ctx.enrollments.stop()  # as on the way out: nothing more is queued
        with server.client(server.config.enroll_secret) as c:
            answer = c.post("/enroll", json={"hostname": "ws-late", "machine_id": uuid.uuid4().hex})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
        assert answer.json() == {"error": "cannot enroll now (the server is stopping); retry later"}
        assert [h.hostname for h in server.store.hosts.list_hosts()] == ["ws-before"]
