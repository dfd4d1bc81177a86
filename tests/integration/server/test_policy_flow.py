"""Publishing and fetching signed policies through the real server: ETag, conflicts, rollout, rollback."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from endpoint_agent.policy import Policy, parse_policy
from endpoint_contract.envelope import load_private_key, load_public_key, sign_policy, verify_envelope
from server_stub.rollout import bucket
from tests.support.server import LiveServer
from tests.support.server_policies import policy_yaml


def _versions(server: LiveServer) -> list[int]:
    with server.admin() as c:
        return [v["version"] for v in c.get("/policy/versions").json()["items"]]


def test_nothing_published_is_a_clear_404(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1")
    with live_server.client(host.node_key) as c:
        r = c.get("/policy")
    assert r.status_code == 404
    assert r.json() == {"error": "no policy is published for this host yet"}


def test_publish_fetch_etag_304_and_next_version(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-1")
    r = live_server.publish(policy_yaml(1))
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["previous_version"] is None
    with live_server.client(host.node_key) as c:
        first = c.get("/policy")
        assert first.status_code == 200
        etag = first.headers["etag"]
        assert etag == '"' + hashlib.sha256(first.content).hexdigest() + '"'
        verified = verify_envelope(first.content, [load_public_key(live_server.public_key)], Policy)
        assert verified.version == 1 and verified.policy.name == "corporate-baseline"

        not_modified = c.get("/policy", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        assert c.get("/policy", headers={"If-None-Match": '"other", ' + etag}).status_code == 304

        assert live_server.publish(policy_yaml(2)).json()["previous_version"] == 1
        second = c.get("/policy", headers={"If-None-Match": etag})
        assert second.status_code == 200 and second.headers["etag"] != etag
        assert verify_envelope(second.content, [load_public_key(live_server.public_key)], Policy).version == 2


def test_version_must_increase(live_server: LiveServer) -> None:
    assert live_server.publish(policy_yaml(5)).status_code == 200
    for version in (5, 4):
        r = live_server.publish(policy_yaml(version))
        assert r.status_code == 409
        assert "not higher than the newest published version 5" in r.json()["error"]
    assert _versions(live_server) == [5]


def test_publish_accepts_the_envelope_as_an_object(live_server: LiveServer) -> None:
    envelope = json.loads(live_server.sign(policy_yaml(1)))
    with live_server.admin() as c:
        r = c.put("/policy", json={"envelope": envelope})
    assert r.status_code == 200 and r.json()["rollout_percent"] == 100


def test_envelopes_not_signed_by_a_trusted_key_are_refused(live_server: LiveServer) -> None:
    policy = parse_policy(policy_yaml(1), "p.yaml")
    foreign = sign_policy(policy, [Ed25519PrivateKey.generate()], "default").decode()
    outer = json.loads(live_server.sign(policy_yaml(1)))
    payload = bytearray(base64.b64decode(outer["payload"]))
    payload[-3] ^= 1
    outer["payload"] = base64.b64encode(bytes(payload)).decode()
    unsigned = {"payload": outer["payload"], "signatures": []}
    expired = sign_policy(
        policy,
        [load_private_key(live_server.private_key)],
        "default",
        issued_at=datetime.now(UTC) - timedelta(days=2),
        expires_in=timedelta(days=1),
    ).decode()
    cases = {
        "foreign key": (foreign, "not signed by any trusted key"),
        "tampered": (json.dumps(outer), "invalid"),
        "unsigned": (json.dumps(unsigned), "not signed"),
        "expired": (expired, "expired"),
        "not json": ("{nope", "not JSON"),
    }
    with live_server.admin() as c:
        for name, (envelope, message) in cases.items():
            r = c.put("/policy", json={"envelope": envelope})
            assert r.status_code == 422, name
            assert message in r.json()["error"], (name, r.json())
        r = c.put(
            "/policy", json={"envelope": live_server.sign(policy_yaml(1)).decode(), "rollout_percent": 101}
        )
        assert r.status_code == 422 and "rollout_percent" in r.json()["error"]
    assert _versions(live_server) == []


def test_rollout_to_ten_percent_of_fifty_hosts_then_all_then_rollback(live_server: LiveServer) -> None:
    hosts = [live_server.enroll(f"ws-{i:02d}") for i in range(50)]

    def fetched_versions() -> dict[str, int]:
        out = {}
        with live_server.client() as c:
            for h in hosts:
                r = c.get("/policy", headers={"Authorization": f"Bearer {h.node_key}"})
                assert r.status_code == 200
                out[h.host_id] = int(r.headers["x-policy-version"])
        return out

    assert live_server.publish(policy_yaml(1)).status_code == 200
    assert live_server.publish(policy_yaml(2), rollout=10).status_code == 200
    first = fetched_versions()
    canaries = {h for h, v in first.items() if v == 2}
    assert set(first.values()) <= {1, 2}
    assert canaries == {h.host_id for h in hosts if bucket(h.host_id, 2) < 10}
    assert len(canaries) <= 20  # about 10% of 50 (5 expected)
    assert fetched_versions() == first  # the same hosts on every fetch

    with live_server.admin() as c:
        assert c.post("/policy/rollout", json={"percent": 100}).json()["rollout_percent"] == 100
    assert set(fetched_versions().values()) == {2}

    with live_server.admin() as c:
        r = c.post("/policy/rollback")
        assert r.status_code == 200
        assert (r.json()["rolled_back_version"], r.json()["version"]) == (2, 1)
    assert set(fetched_versions().values()) == {1}
    assert live_server.publish(policy_yaml(2)).status_code == 409  # a withdrawn number is not reused
    assert live_server.publish(policy_yaml(3)).status_code == 200
    assert set(fetched_versions().values()) == {3}


def test_rollout_and_rollback_need_something_to_act_on(live_server: LiveServer) -> None:
    with live_server.admin() as c:
        r = c.post("/policy/rollout", json={"percent": 50})
        assert r.status_code == 404 and r.json()["error"] == "no policy is published"
        assert c.post("/policy/rollback").status_code == 404
        assert live_server.publish(policy_yaml(1)).status_code == 200
        r = c.post("/policy/rollback")
        assert r.status_code == 409 and "nothing to roll back to" in r.json()["error"]
        assert c.post("/policy/rollout", json={"percent": -1}).status_code == 422
