"""PolicySync in-process against the REAL server (uvicorn subprocess on 127.0.0.1).

Real HTTP client, real server, real ETags and 304s, real enrollment and key rotation, the real
rate limiter's Retry-After, a real snapshot of this machine for the dry-run (nothing is ever
signalled here: PolicySync only decides what is active), a real SQLite outbox for the events.
Envelopes the server refuses on PUT are served through its database (tests/support/policy_inject.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.clock import SystemClock
from endpoint_agent.collect import Collector
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.errors import ServerUnavailable
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.sync.client import HttpServerClient
from endpoint_agent.sync.events import StoreEventSink
from endpoint_agent.sync.identity import EnrollmentFile
from endpoint_agent.sync.policy_sync import PolicySync
from endpoint_agent.sync.safety import DryRun
from endpoint_agent.sync.schedule import PollLoop, PollSchedule
from endpoint_agent.sync.state import PolicyStateStore
from endpoint_contract.envelope import key_id, load_public_key
from tests.support.policy_inject import (
    expired,
    flip_payload_byte,
    serve_raw,
    strip_signatures,
    unknown_key,
)
from tests.support.server import LiveServer, run_server, stop_server

MACHINE_ID = "policy-sync-integration-machine"


def policy(version: int, name: str = "ea-never-running-xyz", mode: str = "enforce") -> str:
    return (
        f"name: sync-integration\nversion: {version}\nmode: {mode}\nrules:\n"
        f"  - id: block-standin\n    category: p2p\n    action: block\n"
        f'    process:\n      name: ["{name}"]\n'
    )


@dataclass
class Agentish:
    """The sync half of an agent, wired like build_policy_sync() but inspectable."""

    server: LiveServer
    state: Path
    store: ViolationStore
    client: HttpServerClient
    sync: PolicySync

    def events(self) -> list[dict[str, Any]]:
        return [e.payload for e in self.store.events(kind="agent")]

    def version(self) -> int | None:
        current = self.sync.current()
        return current.version if current else None


def make_agent(server: LiveServer, state: Path, store: ViolationStore) -> Agentish:
    clock = SystemClock()
    client = HttpServerClient(
        server.base_url,
        enrollment=EnrollmentFile(state),
        enroll_secret=server.enroll_secret,
        machine_id=lambda: MACHINE_ID,
        hostname="ws-integration",
        clock=clock,
    )
    sync = PolicySync(
        client=client,
        keys=[load_public_key(server.public_key)],
        fleet_id="default",
        store=PolicyStateStore(state),
        dry_run=DryRun(Collector().snapshot, Guard(), max_share=0.10),
        events=StoreEventSink(store, clock),
        clock=clock,
    )
    sync.load_last_good()
    return Agentish(server, state, store, client, sync)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with run_server(tmp_path / "server") as live:
        yield live


@pytest.fixture
def agent(server: LiveServer, tmp_path: Path) -> Iterator[Agentish]:
    store = ViolationStore.open(tmp_path / "state" / "violations.sqlite3")
    a = make_agent(server, tmp_path / "state", store)
    try:
        yield a
    finally:
        a.client.close()
        store.close()


def publish(server: LiveServer, text: str, **kwargs: Any) -> None:
    response = server.publish(text, **kwargs)
    assert response.status_code == 200, response.text


def poll_injected(agent: Agentish) -> str:
    """Poll until the server serves what serve_raw wrote past it: a server's in-memory copy of the
    served versions follows the database within about a second (server_stub/watcher.py)."""
    deadline = time.monotonic() + 20.0
    while (outcome := agent.sync.poll()) == "not_modified" and time.monotonic() < deadline:
        time.sleep(0.1)
    return outcome


def test_activate_304_switch_and_every_bad_envelope_is_rejected(server: LiveServer, agent: Agentish) -> None:
    publish(server, policy(1))
    assert agent.sync.poll() == "activated" and agent.version() == 1
    assert agent.sync.poll() == "not_modified"  # the real server's 304 for our ETag
    publish(server, policy(2, name="ea-other-xyz"))
    assert agent.sync.poll() == "activated" and agent.version() == 2
    v1 = server.sign(policy(1))
    v3 = policy(3, name="ea-evil-xyz")
    bad = {
        "signature": [
            flip_payload_byte(server.sign(v3)),
            strip_signatures(server.sign(v3)),
            unknown_key(v3),
        ],
        "rollback": [v1],  # replayed, byte for byte
        "expired": [expired(v3, server.private_key)],
    }
    for code, envelopes in bad.items():
        for envelope in envelopes:
            serve_raw(server.data_dir, envelope)
            assert poll_injected(agent) == "rejected", code
            assert agent.version() == 2
            assert agent.events()[-1]["detail"]["code"] == code
    # the server does not check fleets, so a foreign-fleet policy is published the normal way
    publish(server, policy(8, name="ea-evil-xyz"), fleet_id="staging")
    assert agent.sync.poll() == "rejected" and agent.version() == 2

    events = agent.events()
    assert [e["type"] for e in events] == ["policy_rejected"] * 6
    assert all(e["kind"] == "agent" and e["detail"]["active_version"] == 2 for e in events)
    assert [e["detail"]["code"] for e in events] == [
        "signature",
        "signature",
        "signature",
        "rollback",
        "expired",
        "fleet",
    ]
    replay, fleet = events[3]["detail"], events[5]["detail"]
    assert (replay["version"], replay["key_id"]) == (1, key_id(load_public_key(server.public_key)))
    assert "is for fleet 'staging'" in fleet["reason"]
    current = agent.sync.current()
    assert current is not None and current.mode == "enforce" and current.monitor_reason is None


def test_an_unsafe_policy_is_active_in_monitor_mode_and_reported(server: LiveServer, agent: Agentish) -> None:
    publish(server, policy(1, name="*"))  # blocks everything on this machine, PID 1 included
    assert agent.sync.poll() == "activated"
    current = agent.sync.current()
    assert current is not None and current.version == 1 and current.mode == "enforce"
    assert current.monitor_reason is not None and current.monitor_reason.startswith("policy unsafe: ")
    [event] = agent.events()
    assert event["type"] == "policy_unsafe" and event["detail"]["safe"] is False
    detail = event["detail"]
    assert detail["would_stop"] == detail["processes"] > 1 and detail["protected"]
    assert "protected process" in detail["reason"]


def test_the_agent_enrolls_again_after_an_admin_reset(server: LiveServer, agent: Agentish) -> None:
    publish(server, policy(1))
    agent.sync.poll()
    first = EnrollmentFile(agent.state).load()
    assert first is not None
    # Someone else with the shared secret cannot take this machine id (nor stop its key).
    with server.client(server.enroll_secret) as c:
        taken = c.post("/enroll", json={"hostname": "someone-else", "machine_id": MACHINE_ID})
    assert taken.status_code == 409
    with server.admin() as c:  # `endpoint-admin hosts reset`: the old key stops working now
        assert c.post(f"/hosts/{first.host_id}/reset", json={}).status_code == 200
    agent.sync._etag = None  # a full fetch, so success is visible as "unchanged"
    assert agent.sync.poll() == "unchanged"
    second = EnrollmentFile(agent.state).load()
    assert second is not None
    assert second.host_id == first.host_id and second.node_key != first.node_key


def test_the_agent_rotates_its_key_with_its_current_one(server: LiveServer, agent: Agentish) -> None:
    publish(server, policy(1))
    agent.sync.poll()
    first = EnrollmentFile(agent.state).load()
    rotated = agent.client.enroll()  # sends its current node key: a rotation, not a takeover
    assert first is not None and rotated.host_id == first.host_id and rotated.node_key != first.node_key
    agent.sync._etag = None
    assert agent.sync.poll() == "unchanged"


def test_a_restart_without_the_server_keeps_enforcing_the_last_good_policy(
    server: LiveServer, agent: Agentish, tmp_path: Path
) -> None:
    publish(server, policy(1))
    agent.sync.poll()
    publish(server, policy(2))
    agent.sync.poll()
    agent.client.close()
    stop_server(server.process)

    restarted = make_agent(server, agent.state, agent.store)
    try:
        assert restarted.version() == 2  # before any fetch
        with pytest.raises(ServerUnavailable, match="ConnectError"):
            restarted.sync.poll()
        current = restarted.sync.current()
        assert current is not None and current.version == 2 and current.monitor_reason is None
    finally:
        restarted.client.close()


def test_the_real_rate_limiter_s_retry_after_is_honoured(tmp_path: Path) -> None:
    with run_server(tmp_path / "server", extra_args=["--rate-limit", "0.2", "--rate-burst", "2"]) as server:
        store = ViolationStore.open(tmp_path / "state" / "violations.sqlite3")
        agent = make_agent(server, tmp_path / "state", store)
        try:
            publish(server, policy(1))
            clock = SystemClock()
            schedule = PollSchedule(1.0, clock=clock, rng=random.Random(7))
            loop = PollLoop(agent.sync.poll, schedule)
            limited = None
            for _ in range(5):  # the burst of 2 (per node key) runs out quickly
                try:
                    agent.sync.poll()
                except ServerUnavailable as exc:
                    limited = exc
                    break
            assert limited is not None and limited.retry_after is not None and limited.retry_after >= 1
            loop.run_due()  # the loop meets the same 429 and waits at least as long as it was told
            assert schedule.failures == 1
            assert schedule.seconds_until_due() >= limited.retry_after - 1
        finally:
            agent.client.close()
            store.close()
