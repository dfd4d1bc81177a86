"""The whole reporting story with the real server and the real agent service, on SQLite and PostgreSQL.

Each test publishes a signed policy, runs `endpoint-agent run --server ...` in a private PID namespace
(tests/support/e2e_harness.py) next to stand-ins with unique names, and checks what the security team sees.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.contract import CONTRACT_KEYS
from tests.support.e2e_harness import Agent, Server, wait_for
from tests.support.enforce_procs import is_dead, pid_namespaces_available
from tests.support.holding_proxy import HoldingProxy
from tests.support.service_rig import policy_yaml, unique

_why_not = pid_namespaces_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


def server_violation_ids(server: Server) -> list[str]:
    return [v["event_id"] for v in server.items("/violations")]


def local_violation_ids(agent: Agent) -> list[str]:
    return [e.event_id for e in agent.events("violation")]


def admin_ndjson(server: Server, *args: str) -> list[dict[str, Any]]:
    """`endpoint-admin ARGS --format ndjson`, parsed."""
    out = server.admin_cli(*args, "--format", "ndjson").stdout
    return [json.loads(line) for line in out.splitlines()]


def all_delivered(server: Server, agent: Agent, at_least: int) -> bool:
    local = local_violation_ids(agent)
    return len(local) >= at_least and sorted(server_violation_ids(server)) == sorted(local)


def test_violations_reach_the_security_team_and_a_stopped_agent_goes_stale(
    server: Server, agent: Agent
) -> None:
    blocked, watched = unique("e2e-p2p"), unique("e2e-seen")
    server.publish(policy_yaml([("p2p-standin", "block", blocked), ("seen-standin", "report", watched)]))
    victim, bystander = agent.standin(blocked), agent.standin(watched)
    proc = agent.start()
    wait_for("the agent to stop the stand-in", lambda: is_dead(victim.pid), context=agent.log_text)

    wait_for(
        "both violations on the server",
        lambda: len(server_violation_ids(server)) >= 2,
        context=agent.log_text,
    )
    rows = admin_ndjson(server, "violations", "--since", "1h")
    assert sorted((r["rule_id"], r["action"]) for r in rows) == [
        ("p2p-standin", "killed"),
        ("seen-standin", "reported"),
    ]
    for row in rows:
        assert row.keys() >= CONTRACT_KEYS, row
        assert row["policy_version"] == 1 and row["category"] == "p2p" and row["username"] == "root"
    assert sorted(r["process_name"] for r in rows) == sorted([blocked, watched])
    assert sorted(r["event_id"] for r in rows) == sorted(local_violation_ids(agent))
    assert not is_dead(bystander.pid)  # report-only: nothing signalled
    table = server.admin_cli("violations", "--format", "table").stdout
    assert "p2p-standin" in table and "killed" in table and blocked in table

    [host] = wait_for(
        "a heartbeat with the kill",
        lambda: [h for h in server.hosts() if (h.get("counters") or {}).get("kills") == 1],
        context=agent.log_text,
    )
    assert host["policy_version"] == 1 and host["mode"] == "enforce" and host["circuit_state"] == "closed"
    assert host["counters"]["findings"] == 2 and host["stale"] is False
    assert "STALE" not in server.admin_cli("hosts").stdout

    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    wait_for(
        "the stopped agent to be marked stale",
        lambda: "STALE" in server.admin_cli("hosts").stdout,
        timeout=30,
        context=agent.log_text,
    )
    [listed] = admin_ndjson(server, "hosts")
    assert listed["stale"] is True and listed["host_id"] == host["host_id"]


def test_violations_during_an_outage_all_arrive_once_after_it(server: Server, agent: Agent) -> None:
    prefix = unique("e2e-p2p")
    server.publish(policy_yaml([("p2p-standin", "block", f"{prefix}-*")]))
    agent.start()
    wait_for("the agent to run policy 1", lambda: agent.running_policy(1), context=agent.log_text)
    wait_for("a first heartbeat", lambda: [h for h in server.hosts() if h.get("heartbeat_at")])

    server.stop()
    victims = [agent.standin(f"{prefix}-{i}") for i in range(3)]
    wait_for(
        "the agent to stop the stand-ins while the server is down",
        lambda: all(is_dead(v.pid) for v in victims),
        context=agent.log_text,
    )
    wait_for(
        "upload failures to be noticed",
        lambda: (agent.status().get("report") or {}).get("failures_in_a_row", 0) >= 2,
        context=agent.log_text,
    )
    assert len(local_violation_ids(agent)) == 3
    assert all(e.uploaded_at is None for e in agent.events("violation"))

    server.start()
    wait_for("every violation to arrive", lambda: all_delivered(server, agent, 3), context=agent.log_text)
    ids = server_violation_ids(server)
    assert len(ids) == len(set(ids)) == 3
    wait_for(
        "the local store to mark them uploaded",
        lambda: all(e.uploaded_at for e in agent.events("violation")),
        context=agent.log_text,
    )


def test_kill_9_during_an_upload_then_restart_stores_each_event_once(
    server: Server, agent: Agent, ns_proxy: HoldingProxy
) -> None:
    prefix = unique("e2e-p2p")
    server.publish(policy_yaml([("p2p-standin", "block", f"{prefix}-*")]))
    ns_proxy.hold_events.set()
    first = agent.start()
    victims = [agent.standin(f"{prefix}-{i}") for i in range(4)]
    wait_for(
        "the stand-ins to be stopped", lambda: all(is_dead(v.pid) for v in victims), context=agent.log_text
    )
    assert ns_proxy.held.wait(60), agent.log_text()
    # The server has stored the batch; the agent is waiting for the answer: kill it now.
    first.signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    stored_before = server_violation_ids(server)
    assert stored_before, "the held batch reached the server"
    assert all(e.uploaded_at is None for e in agent.events("violation"))  # never acknowledged locally

    ns_proxy.hold_events.clear()
    ns_proxy.release.set()
    agent.start()
    wait_for("every violation to arrive", lambda: all_delivered(server, agent, 4), context=agent.log_text)
    wait_for(
        "the local store to mark them uploaded",
        lambda: all(e.uploaded_at for e in agent.events("violation")),
        context=agent.log_text,
    )
    ids = server_violation_ids(server)
    assert Counter(ids).most_common(1)[0][1] == 1 and len(ids) == 4
    assert set(stored_before) <= set(ids)


def test_a_full_store_drops_the_oldest_and_the_count_reaches_the_server(server: Server, agent: Agent) -> None:
    name = unique("e2e-p2p")
    # 120 report rules on one stand-in: 120 violations in one scan, into a store capped at 100.
    server.publish(policy_yaml([(f"seen-{i:03d}", "report", name) for i in range(120)]))
    agent.configure(store_max_events=100)
    agent.standin(name)
    agent.start()
    wait_for("the store to drop events", lambda: agent.dropped() == 20, context=agent.log_text)
    report = wait_for(
        "the events_dropped report",
        lambda: server.items("/agent-events", type="events_dropped"),
        context=agent.log_text,
    )
    assert sum(r["count"] for r in report) == 20
    wait_for(
        "the kept violations to arrive", lambda: all_delivered(server, agent, 100), context=agent.log_text
    )
    rules = sorted(v["rule_id"] for v in server.items("/violations"))
    assert rules == [f"seen-{i:03d}" for i in range(20, 120)]  # the 20 oldest were dropped
    [host] = wait_for(
        "a heartbeat counting the drops",
        lambda: [h for h in server.hosts() if (h.get("counters") or {}).get("dropped_events") == 20],
        context=agent.log_text,
    )
    assert host["counters"]["findings"] == 120


@pytest.fixture
def ns_proxy(server: Server, agent: Agent) -> Iterator[HoldingProxy]:
    """The agent talks to the server through a proxy that can withhold an upload's answer."""
    with HoldingProxy(server.url) as proxy:
        agent.url = proxy.url
        yield proxy
