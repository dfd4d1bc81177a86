"""HttpServerClient on an httpx.MockTransport: enrollment, node keys, status codes, Retry-After."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from endpoint_agent.errors import ServerRejected, ServerUnavailable
from endpoint_agent.sync.client import MAX_RETRY_AFTER, HttpServerClient, parse_retry_after
from endpoint_agent.sync.identity import Enrollment, EnrollmentFile, machine_id
from endpoint_contract.envelope import MAX_ENVELOPE_BYTES
from tests.support.doubles import FakeClock

SECRET = "enroll-secret-0123456789"
Handler = Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """The server's agent endpoints, with node keys the test can revoke."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # node key -> host id
        self.enrollments: list[dict[str, str]] = []
        self.requests: list[httpx.Request] = []
        self.policy = b'{"payload": "x", "signatures": []}'
        self.override: Handler | None = None

    def revoke_all(self) -> None:
        self.keys.clear()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.override is not None:
            return self.override(request)
        auth = request.headers.get("authorization", "")
        path = request.url.path
        if path == "/api/v1/enroll":
            if auth != f"Bearer {SECRET}":
                return httpx.Response(401, json={"error": "invalid enroll secret"})
            body = json.loads(request.content)
            self.enrollments.append(body)
            key = f"key-{len(self.enrollments)}"
            self.keys = {key: "host-1"}  # re-enrolling rotates: the old key stops working
            return httpx.Response(200, json={"host_id": "host-1", "node_key": key})
        token = auth.removeprefix("Bearer ")
        if token not in self.keys:
            return httpx.Response(401, json={"error": "unknown node key"})
        if path == "/api/v1/policy":
            etag = '"abc"'
            if request.headers.get("if-none-match") == etag:
                return httpx.Response(304, headers={"ETag": etag})
            return httpx.Response(200, content=self.policy, headers={"ETag": etag, "X-Policy-Version": "3"})
        if path == "/api/v1/events":
            ids = [e["event_id"] for e in json.loads(request.content)["events"]]
            return httpx.Response(200, json={"acked": ids})
        return httpx.Response(404, json={"error": "not found"})


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def make_client(
    tmp_path: Path, api: FakeApi, *, secret: str | None = SECRET, clock: FakeClock | None = None
) -> HttpServerClient:
    return HttpServerClient(
        "http://127.0.0.1:9",
        enrollment=EnrollmentFile(tmp_path),
        enroll_secret=secret,
        machine_id=lambda: "machine-1",
        hostname="ws-1",
        transport=httpx.MockTransport(api),
        clock=clock or FakeClock(),
    )


def test_enrolls_on_first_use_and_persists_the_node_key_privately(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        fetched = client.fetch_policy(None)
    assert fetched.status == "ok" and fetched.body == api.policy
    assert fetched.etag == '"abc"' and fetched.served_version == 3
    assert api.enrollments == [{"hostname": "ws-1", "machine_id": "machine-1"}]
    path = tmp_path / "enrollment.json"
    assert json.loads(path.read_text()) == {"host_id": "host-1", "node_key": "key-1"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a restart reuses the key
    with make_client(tmp_path, api) as again:
        assert again.host_id == "host-1"
        again.fetch_policy(None)
    assert len(api.enrollments) == 1
    assert api.requests[-1].headers["authorization"] == "Bearer key-1"


def test_conditional_fetch_returns_not_modified(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        fetched = client.fetch_policy('"abc"')
    assert fetched.status == "not_modified" and fetched.body is None and fetched.etag == '"abc"'
    assert api.requests[-1].headers["if-none-match"] == '"abc"'


def test_a_revoked_node_key_means_enroll_again_once_and_retry(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        client.fetch_policy(None)
        api.revoke_all()
        assert client.fetch_policy(None).status == "ok"
    assert len(api.enrollments) == 2
    assert EnrollmentFile(tmp_path).load() == Enrollment("host-1", "key-2")


def test_a_key_refused_even_after_enrolling_is_rejected_not_looped(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        client.fetch_policy(None)
        api.override = lambda r: (
            httpx.Response(200, json={"host_id": "h", "node_key": "k"})
            if r.url.path.endswith("/enroll")
            else httpx.Response(401, json={"error": "unknown node key"})
        )
        with pytest.raises(ServerRejected, match="refused right after enrolling") as info:
            client.fetch_policy(None)
    assert info.value.status_code == 401
    assert sum(r.url.path.endswith("/enroll") for r in api.requests) == 2  # one re-enrollment only


def test_a_wrong_enroll_secret_is_a_clear_rejection(tmp_path: Path, api: FakeApi) -> None:
    wrong = make_client(tmp_path, api, secret="wrong-secret-0123456789")
    with wrong, pytest.raises(ServerRejected, match="enrollment refused: invalid enroll secret"):
        wrong.fetch_policy(None)
    unset = make_client(tmp_path / "b", api, secret=None)
    with unset, pytest.raises(ServerRejected, match="no enroll secret is configured"):
        unset.fetch_policy(None)


@pytest.mark.parametrize(
    ("response", "retry_after"),
    [
        (httpx.Response(429, headers={"Retry-After": "17"}, json={"error": "slow down"}), 17.0),
        (httpx.Response(503, headers={"Retry-After": "5"}, json={"error": "database unavailable"}), 5.0),
        (httpx.Response(500, text="oops"), None),
        (httpx.Response(502, headers={"Retry-After": "soon"}), None),
    ],
)
def test_temporary_server_failures(
    tmp_path: Path, api: FakeApi, response: httpx.Response, retry_after: float | None
) -> None:
    with make_client(tmp_path, api) as client:
        client.fetch_policy(None)
        api.override = lambda r: response
        with pytest.raises(ServerUnavailable) as info:
            client.fetch_policy(None)
    assert info.value.retry_after == retry_after


def test_the_server_error_message_is_kept(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        client.fetch_policy(None)
        api.override = lambda r: httpx.Response(403, json={"error": "this credential may not do that"})
        with pytest.raises(ServerRejected, match="GET /policy: this credential may not do that") as info:
            client.fetch_policy(None)
    assert info.value.status_code == 403


def test_network_errors_and_timeouts_are_unavailable(tmp_path: Path, api: FakeApi) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with make_client(tmp_path, api) as client:
        client.fetch_policy(None)
        api.override = refuse
        with pytest.raises(ServerUnavailable, match="ConnectError: connection refused"):
            client.fetch_policy(None)
        api.override = slow
        with pytest.raises(ServerUnavailable, match="timed out"):
            client.fetch_policy(None)


def test_no_policy_published_yet_is_an_answer(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        client.fetch_policy(None)
        api.override = lambda r: httpx.Response(
            404, json={"error": "no policy is published for this host yet"}
        )
        assert client.fetch_policy(None).status == "none"


def test_redirects_are_not_followed(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        client.fetch_policy(None)
        api.override = lambda r: httpx.Response(302, headers={"Location": "http://127.0.0.2/steal"})
        with pytest.raises(ServerRejected, match="302"):
            client.fetch_policy(None)
    assert all(r.url.host == "127.0.0.1" for r in api.requests)


def test_an_oversized_policy_body_is_cut_one_byte_past_the_limit(tmp_path: Path, api: FakeApi) -> None:
    api.policy = b"x" * (MAX_ENVELOPE_BYTES + 5000)
    with make_client(tmp_path, api) as client:
        fetched = client.fetch_policy(None)
    assert fetched.body is not None and len(fetched.body) == MAX_ENVELOPE_BYTES + 1


def test_post_events_returns_the_acked_ids(tmp_path: Path, api: FakeApi) -> None:
    with make_client(tmp_path, api) as client:
        assert client.post_events(['{"event_id":"a"}', '{"event_id":"b"}']) == ["a", "b"]
        api.override = lambda r: httpx.Response(200, json={"acked": "nope"})
        with pytest.raises(ServerUnavailable, match="no list of acked"):
            client.post_events(['{"event_id":"a"}'])


def test_retry_after_forms() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    assert parse_retry_after("120", clock) == 120
    assert parse_retry_after(format_datetime(clock.now() + timedelta(seconds=90), usegmt=True), clock) == 90
    assert parse_retry_after(format_datetime(clock.now() - timedelta(seconds=90), usegmt=True), clock) == 0
    assert parse_retry_after("999999", clock) == MAX_RETRY_AFTER
    assert parse_retry_after(None, clock) is None
    assert parse_retry_after("-5", clock) is None
    assert parse_retry_after("tomorrow", clock) is None


def test_machine_id_prefers_the_system_one_else_generates_and_keeps_one(tmp_path: Path) -> None:
    system = tmp_path / "machine-id"
    system.write_text("4c4c4544004210508033b4c04f4e4d32\n")
    assert machine_id(tmp_path / "state", system) == "4c4c4544004210508033b4c04f4e4d32"
    missing = tmp_path / "absent"
    first = machine_id(tmp_path / "state", missing)
    assert first == machine_id(tmp_path / "state", missing) and len(first) == 32
    system.write_text("")
    assert machine_id(tmp_path / "state", system) == first
