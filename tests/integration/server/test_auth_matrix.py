"""Every endpoint with no credential, each wrong role, and the right role(s)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import LiveServer, run_server
from tests.support.server_policies import policy_yaml

ROLES = ("admin", "reader", "enroll", "node")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_server(Path(tmp_path_factory.mktemp("auth-matrix"))) as s:
        assert s.publish(policy_yaml(1)).status_code == 200
        yield s


@pytest.fixture(scope="module")
def tokens(server: LiveServer) -> dict[str, str]:
    host = server.enroll("matrix-host")
    return {
        "admin": server.admin_token,
        "reader": server.reader_token,
        "enroll": server.enroll_secret,
        "node": host.node_key,
    }


def _event() -> dict[str, Any]:
    return {
        "kind": "agent",
        "event_id": str(uuid.uuid4()),
        "detected_at": "2030-01-01T00:00:00Z",
        "type": "x",
    }


def _publish_body(server: LiveServer, version: int) -> dict[str, Any]:
    return {"envelope": server.sign(policy_yaml(version)).decode(), "rollout_percent": 100}


_versions = iter(range(2, 10_000))

# method, path, body factory, roles allowed
ENDPOINTS: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/enroll", lambda s: {"hostname": "h", "machine_id": uuid.uuid4().hex}, {"enroll"}),
    ("GET", "/policy", None, {"node"}),
    ("POST", "/events", lambda s: {"events": [_event()]}, {"node"}),
    ("POST", "/heartbeat", lambda s: {"agent_version": "1.0"}, {"node"}),
    ("PUT", "/policy", lambda s: _publish_body(s, next(_versions)), {"admin"}),
    ("POST", "/policy/rollout", lambda s: {"percent": 100}, {"admin"}),
    ("POST", "/policy/rollback", lambda s: {}, {"admin"}),
    ("GET", "/policy/versions", None, {"admin", "reader"}),
    ("GET", "/violations", None, {"admin", "reader"}),
    ("GET", "/agent-events", None, {"admin", "reader"}),
    ("GET", "/hosts", None, {"admin", "reader"}),
    ("GET", "/summary", None, {"admin", "reader"}),
    ("GET", "/report", None, {"admin", "reader"}),
    ("GET", "/audit", None, {"admin", "reader"}),
    (
        "POST",
        "/violations/triage",
        lambda s: {"items": [{"host": "h", "event_id": "e"}], "state": "acknowledged"},
        {"admin"},
    ),
]


def _call(server: LiveServer, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=server.api_url, timeout=30) as c:
        return c.request(method, path, json=body(server) if body else None, headers=headers)


@pytest.mark.parametrize(
    ("method", "path", "body", "allowed"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
def test_role_matrix(
    server: LiveServer, tokens: dict[str, str], method: str, path: str, body: Any, allowed: set[str]
) -> None:
    missing = _call(server, method, path, body, {})
    assert missing.status_code == 401 and "error" in missing.json()
    assert missing.headers["www-authenticate"] == "Bearer"
    for bad in ({"Authorization": "Bearer " + "x" * 43}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        r = _call(server, method, path, body, bad)
        assert r.status_code == 401, bad
    for role in ROLES:
        r = _call(server, method, path, body, {"Authorization": f"Bearer {tokens[role]}"})
        if role in allowed:
            assert r.status_code not in (401, 403) and r.status_code < 500, (role, r.status_code, r.text)
        else:
            assert r.status_code == 403, (role, r.status_code, r.text)
            assert r.json()["error"].startswith(f"{role} credentials may not use this endpoint")


def test_healthz_and_openapi_need_no_credential(server: LiveServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        assert c.get("/api/v1/healthz").json() == {"status": "ok"}
        spec = c.get("/openapi.json").json()
    paths = set(spec["paths"])
    for _method, path, _body, _allowed in ENDPOINTS:
        assert "/api/v1" + path in paths


def test_a_node_key_speaks_only_for_its_own_host(server: LiveServer, tokens: dict[str, str]) -> None:
    victim = server.enroll("victim")
    event = _event() | {"host": victim.host_id, "hostname": "victim", "host_id": victim.host_id}
    with server.client(tokens["node"]) as c:
        assert c.post("/events", json={"events": [event]}).status_code == 200
    with server.reader() as c:
        items = c.get("/agent-events", params={"host": victim.host_id}).json()["items"]
        assert items == []
        mine = c.get("/agent-events", params={"host": "matrix-host"}).json()["items"]
    stored = [i for i in mine if i["event_id"] == event["event_id"]]
    assert len(stored) == 1 and stored[0]["hostname"] == "matrix-host" and stored[0]["host"] != victim.host_id


def test_unknown_paths_and_methods_answer_json(server: LiveServer) -> None:
    with server.admin() as c:
        r = c.get("/nope")
        assert r.status_code == 404 and r.json() == {"error": "Not Found"}
        r = c.delete("/policy")
        assert r.status_code == 405 and "error" in r.json()
