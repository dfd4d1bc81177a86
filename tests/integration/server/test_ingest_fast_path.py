"""POST /events answered by the plain ASGI layer (server_stub/ingestserve.py) exactly as the route
answers it, against the real app under uvicorn on 127.0.0.1.

Each upload is sent twice to the same server, once through the layer and once with it switched
off (the framework's routing, dependencies and response validation), and the two answers must
match -- status, body and headers but Date: a batch of violations and agent events with an id
repeated, the same batch retried, batches that do not validate, are not JSON or are too large,
and credentials that may not upload. What is stored is the same either way: each id once, as
sent, with the server's identity of the host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from endpoint_contract.events import AgentEvent, Violation, batch_body
from server_stub.ingestserve import IngestFastPath
from server_stub.store import EventFilter
from tests.support.inprocess_server import InProcessServer, in_process_server
from tests.support.server import database_url
from tests.support.server_events import agent_event, violation

MAX_EVENTS = 5


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InProcessServer]:
    """On PostgreSQL the layer queues the body undecoded for a group writer (server_stub/ingestgroup.py),
    which decodes it there; on SQLite it is decoded and stored in a worker thread."""
    with (
        database_url(request.param, tmp_path) as db_url,
        in_process_server(tmp_path, max_events=MAX_EVENTS, db_url=db_url) as live,
    ):
        assert (live.app.state.ctx.uploads is not None) == (request.param == "postgres")
        yield live


def _violation(**over: Any) -> str:
    return Violation.model_validate(violation(**{"hostname": "ws-1", **over})).to_json_text()


def _invalid(**over: Any) -> str:
    return json.dumps(violation(**over))


def _agent_event() -> str:
    return AgentEvent.model_validate(agent_event()).to_json_text()


def _answer(r: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    return r.status_code, r.content, [(k, v) for k, v in r.headers.multi_items() if k != "date"]


def _same(server: InProcessServer, token: str | None, body: bytes) -> httpx.Response:
    answers = []
    for fast in (True, False):
        IngestFastPath.fast = fast
        try:
            with server.client(token) as c:
                answers.append(c.post("/events", content=body, headers={"Content-Type": "application/json"}))
        finally:
            IngestFastPath.fast = True
    assert _answer(answers[0]) == _answer(answers[1])
    return answers[0]


def test_uploads_answer_as_the_route_and_store_the_same(server: InProcessServer) -> None:
    key = server.enroll("ws-1")["node_key"]
    first = _violation()
    texts = [first, _agent_event(), _violation(action="reported"), first]
    ok = _same(server, key, batch_body(texts))
    assert ok.status_code == 200
    assert ok.json() == {"acked": [json.loads(t)["event_id"] for t in texts[:3]]}
    assert _same(server, key, batch_body(texts[:2])).json()["acked"] == ok.json()["acked"][:2]  # a retry
    stored, _ = server.store.events.page("violation", EventFilter(), after_id=0, limit=10)
    assert sorted(r.data["event_id"] for r in stored) == sorted(
        json.loads(t)["event_id"] for t in (texts[0], texts[2])
    )
    assert {r.data["hostname"] for r in stored} == {"ws-1"} and all(r.data["host_id"] for r in stored)
    # What the route refuses, it refuses either way (the layer hands it on).
    for body in (
        batch_body([_invalid(pid=-1)]),
        batch_body([_violation(), _invalid(rule_id="")]),
        b"{not json",
        b"",
        b'{"events": [], "extra": 1}',
        batch_body([_violation() for _ in range(MAX_EVENTS + 1)]),
        b'{"events": [{"a":' + b'{"a":' * 5000 + b"}" * 5001 + b"]}",
    ):
        assert _same(server, key, body).status_code in (400, 413, 422)
    for token in (None, "not-a-key", server.config.enroll_secret, server.config.admin_token):
        assert _same(server, token, batch_body([_violation()])).status_code in (401, 403)
    assert len(server.store.events.page("violation", EventFilter(), after_id=0, limit=10)[0]) == 2


def test_a_valid_batch_never_reaches_the_route(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server_stub.routes import agent

    def route_reached(*_: Any) -> list[str]:
        raise AssertionError("the route stored a batch the layer should have")

    monkeypatch.setattr(agent, "store_uploaded", route_reached)
    key = server.enroll("ws-2")["node_key"]
    with server.client(key) as c:
        r = c.post("/events", content=batch_body([_violation(hostname="ws-2")]))
    assert r.status_code == 200 and len(r.json()["acked"]) == 1


# --- PostgreSQL: a node's upload taken in the first layer (ingestserve.UploadDoor) ---------------


class _Framework:
    """In place of what the first layer hands on to (the framework): counts what reaches it."""

    def __init__(self, app: Any) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture
def pg_server(tmp_path: Path) -> Iterator[InProcessServer]:
    with (
        database_url("postgres", tmp_path) as db_url,
        in_process_server(tmp_path, max_events=MAX_EVENTS, db_url=db_url, body_timeout=1.0) as live,
    ):
        yield live


def _raw_post(server: InProcessServer, token: str, body: bytes, parts: int = 1, pause: float = 0.0) -> bytes:
    """POST /events over a plain socket, the body in `parts` writes `pause` s apart; the answer."""
    import socket
    import time

    from tests.support.server import API

    head = (
        f"POST {API}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    step = -(-len(body) // parts)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        for i in range(0, len(body), step):
            time.sleep(pause)
            try:
                sock.sendall(body[i : i + step])
            except OSError:  # answered (and closed) before the whole body came
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.postgres
def test_a_nodes_upload_is_answered_before_the_framework_and_what_is_not_certain_reaches_it(
    pg_server: InProcessServer,
) -> None:
    front = pg_server.app.front_door
    assert front is not None and front.uploads is not None
    key = pg_server.enroll("ws-1")["node_key"]
    with pg_server.client(key) as c:  # the key looked up once (the framework's way), then held in memory
        c.get("/policy")
    framework = front.app = _Framework(front.app)
    texts = [_violation(), _agent_event()]
    ok = _raw_post(pg_server, key, batch_body(texts), parts=3, pause=0.05)  # the body in three reads
    assert ok.startswith(b"HTTP/1.1 200") and json.loads(ok.split(b"\r\n\r\n", 1)[1]) == {
        "acked": [json.loads(t)["event_id"] for t in texts]
    }
    assert framework.calls == 0
    # What the route must name (a batch that does not validate) and what is not a node's: on to it.
    bad = _raw_post(pg_server, key, batch_body([_invalid(pid=-1)]))
    assert bad.startswith(b"HTTP/1.1 422") and framework.calls == 1
    assert _raw_post(pg_server, "not-a-key", batch_body(texts)).startswith(b"HTTP/1.1 401")
    assert framework.calls == 2
    stored, _ = pg_server.store.events.page("violation", EventFilter(), after_id=0, limit=10)
    assert [r.data["event_id"] for r in stored] == [json.loads(texts[0])["event_id"]]


@pytest.mark.postgres
def test_an_upload_whose_body_does_not_come_in_time_is_answered_408_and_nothing_stored(
    pg_server: InProcessServer,
) -> None:
    key = pg_server.enroll("ws-1")["node_key"]
    with pg_server.client(key) as c:
        c.get("/policy")
    front = pg_server.app.front_door
    assert front is not None
    framework = front.app = _Framework(front.app)
    late = _raw_post(pg_server, key, batch_body([_violation()]), parts=2, pause=1.5)
    assert late.startswith(b"HTTP/1.1 408") and b"request body not received within 1 s" in late
    assert framework.calls == 0  # the first layer's own answer, worded as the body layer words it
    assert pg_server.store.events.page("violation", EventFilter(), after_id=0, limit=10)[0] == []


@pytest.mark.postgres
def test_an_upload_past_its_hosts_rate_limit_is_refused_in_the_first_layer_as_the_framework_refuses(
    tmp_path: Path,
) -> None:
    with (
        database_url("postgres", tmp_path) as db_url,
        in_process_server(tmp_path, db_url=db_url, rate_burst=2, rate_limit=0.01) as server,
    ):
        front = server.app.front_door
        assert front is not None
        framework = front.app = _Framework(front.app)
        refusals = []
        for n, fast in enumerate((True, False)):
            key = server.enroll(f"ws-{n}")["node_key"]
            with server.client(key) as c:
                c.get("/policy")  # the key looked up once (the framework's way), then held in memory
                IngestFastPath.fast = fast
                before = framework.calls
                try:
                    answers = [c.post("/events", content=batch_body([_violation()])) for _ in range(2)]
                finally:
                    IngestFastPath.fast = True
            assert [a.status_code for a in answers] == [200, 429]
            assert framework.calls - before == (0 if fast else 2)
            refusals.append(answers[1])
    fast_429, framework_429 = refusals
    assert fast_429.content == framework_429.content
    assert [k for k, _ in fast_429.headers.multi_items()] == [
        k for k, _ in framework_429.headers.multi_items()
    ]
    assert int(fast_429.headers["retry-after"]) > 0
