"""Policy distribution end to end: the REAL server and the REAL agent service (`endpoint-agent run
--server ...`) as subprocesses, enforcing on stand-ins.

KILL SAFETY: the agent and its stand-ins run in a private PID namespace (tests/support/e2e_harness.py);
even the "block everything" policy below can reach nothing but what the test started.

Envelopes the server refuses on PUT (tampered, unsigned, unknown key, replayed, expired) are
written into the server's database through its own store API (tests/support/policy_inject.py),
so the agent receives exactly those bytes from the real server over real HTTP.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from endpoint_contract.envelope import key_id, load_public_key
from tests.support.e2e_harness import Agent, Server, wait_for
from tests.support.enforce_procs import NsProcess, is_dead, pid_namespaces_available
from tests.support.policy_inject import (
    expired,
    flip_payload_byte,
    serve_raw,
    strip_signatures,
    unknown_key,
)
from tests.support.service_rig import policy_yaml, unique

_why_not = pid_namespaces_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


@pytest.fixture
def db_url() -> None:
    """SQLite only (overrides the e2e conftest's database matrix): the bad envelopes are written into it."""
    return None


def sync_status(agent: Agent) -> dict[str, Any]:
    return agent.status().get("policy_sync") or {}


def status_when(agent: Agent, ok: Callable[[dict[str, Any]], bool]) -> Callable[[], dict[str, Any] | None]:
    """A probe for wait_for: the agent's status once `ok` holds for it."""

    def probe() -> dict[str, Any] | None:
        status = agent.status()
        return status if status and ok(status) else None

    return probe


def running(version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("state") == "running" and (s.get("policy") or {}).get("version") == version


def agent_events(agent: Agent, type_: str) -> list[dict[str, Any]]:
    return [e.payload for e in agent.events(kind="agent") if e.payload.get("type") == type_]


def rejections(agent: Agent, *, at_least: int) -> Callable[[], bool]:
    return lambda: len(agent_events(agent, "policy_rejected")) >= at_least


def stopped_by_agent(proc: NsProcess, agent: Agent) -> int:
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"stand-in {proc.pid} is still running\n{agent.log_text()}") from None


def test_sync_enforces_switches_rejects_and_survives_a_reboot_without_server(
    server: Server, agent: Agent
) -> None:
    # The namespace holds only a handful of processes: one stand-in is a large share of them.
    agent.configure(unsafe_kill_share=0.5)
    v1_name, v2_prefix = unique("ea-v1"), unique("ea-v2")
    v2 = policy_yaml([("block-v2", "block", f"{v2_prefix}-*")], version=2)
    server.publish(policy_yaml([("block-v1", "block", v1_name)], version=1))
    first, second = agent.standin(v1_name), agent.standin(f"{v2_prefix}-a")

    agent.start()
    assert stopped_by_agent(first, agent) == -signal.SIGTERM  # v1 enforced
    wait_for("policy version 1", lambda: agent.running_policy(1), context=agent.log_text)
    assert not is_dead(second.pid)

    # Nothing changed: the agent's conditional polls get 304s.
    status = wait_for(
        "304 answers",
        status_when(agent, lambda s: s.get("policy_sync", {}).get("not_modified", 0) >= 2),
        context=agent.log_text,
    )
    polls = status["policy_sync"]["polls"]
    server.publish(v2)
    assert stopped_by_agent(second, agent) == -signal.SIGTERM  # v2 enforced
    status = wait_for("policy version 2", status_when(agent, running(2)))
    # Within one poll of the publication (status.json may lag the poll counter by one scan).
    activation = status["policy_sync"]["last_activation"]
    assert activation["version"] == 2 and activation["poll"] <= polls + 3

    # Every bad envelope is rejected; version 2 stays active and enforcing.
    v3 = policy_yaml([("block-v3", "block", "ea-never-*")], version=3)
    bad = [
        ("signature", flip_payload_byte(server.live.sign(v3))),
        ("signature", strip_signatures(server.live.sign(v3))),
        ("signature", unknown_key(v3)),
        ("rollback", server.live.sign(policy_yaml([("block-v1", "block", v1_name)], version=1))),
        ("expired", expired(v3, server.live.private_key)),
    ]
    for n, (code, envelope) in enumerate(bad, start=1):
        serve_raw(server.live.data_dir, envelope)
        wait_for(f"rejection {n} ({code})", rejections(agent, at_least=n))
        assert agent_events(agent, "policy_rejected")[-1]["detail"]["code"] == code
    # The server does not check fleets: a foreign-fleet policy is published the normal way.
    response = server.live.publish(
        policy_yaml([("block-v9", "block", "ea-never-*")], version=9), fleet_id="staging"
    )
    assert response.status_code == 200, response.text
    wait_for("the foreign-fleet rejection", rejections(agent, at_least=6))

    rejected = [e["detail"] for e in agent_events(agent, "policy_rejected")]
    assert [d["code"] for d in rejected] == ["signature"] * 3 + ["rollback", "expired", "fleet"]
    assert all(d["active_version"] == 2 for d in rejected)
    assert rejected[3]["version"] == 1 and rejected[3]["key_id"] == key_id(
        load_public_key(server.live.public_key)
    )
    assert "policy rejected" in agent.log_text()
    third = agent.standin(f"{v2_prefix}-b")
    assert stopped_by_agent(third, agent) == -signal.SIGTERM  # still enforcing version 2
    status = agent.status()
    assert status["policy"]["version"] == 2 and status["mode"]["mode"] == "enforce"

    # Reboot without network: the server is gone, the agent restarts and enforces the last good policy.
    server.stop()
    assert agent.proc is not None
    agent.proc.signal(signal.SIGTERM)
    assert agent.proc.wait(30) == 0
    fourth = agent.standin(f"{v2_prefix}-c")
    agent.start()
    assert stopped_by_agent(fourth, agent) == -signal.SIGTERM
    status = wait_for("the restarted agent's status", status_when(agent, running(2)))
    assert "last good policy" in status["policy"]["source"]
    wait_for("a failed poll", lambda: sync_status(agent).get("failed", 0) >= 1)


def test_an_unsafe_policy_only_monitors_and_is_reported(server: Server, agent: Agent) -> None:
    name = unique("ea-any")
    server.publish(policy_yaml([("block-everything", "block", "*")], version=1))
    standin = agent.standin(name)
    agent.start()
    status = wait_for(
        "the unsafe policy active in monitor mode",
        status_when(agent, lambda s: running(1)(s) and s["mode"]["mode"] == "monitor"),
        context=agent.log_text,
    )
    assert status["mode"]["reason"].startswith("policy unsafe: its block rules match")
    assert status["policy"]["monitor_reason"] == status["mode"]["reason"]
    [event] = agent_events(agent, "policy_unsafe")
    assert event["detail"]["version"] == 1 and event["detail"]["protected"]
    assert "UNSAFE" in agent.log_text()
    wait_for(
        "a would_block record of the stand-in",
        lambda: any(
            e.payload["process_name"] == name and e.payload["action"] == "would_block" for e in agent.events()
        ),
    )
    first_scan = agent.status()["scans"]
    wait_for("two more scans", lambda: agent.status().get("scans", 0) >= first_scan + 2)
    assert not is_dead(standin.pid)
    assert all(e.payload["action"] in ("would_block", "protected") for e in agent.events())


def test_a_newly_activated_policy_applies_at_once_not_at_the_next_full_scan(
    server: Server, agent: Agent
) -> None:
    # Full scans an hour apart: only the scan that follows an activation can stop this stand-in,
    # which was already running before the policy existed (no exec event will come for it).
    name = unique("ea-late")
    standin = agent.standin(name)
    agent.start(scan_interval=3600)
    wait_for("the agent's first scan", status_when(agent, lambda s: s.get("scans", 0) >= 1))
    assert not is_dead(standin.pid)

    server.publish(policy_yaml([("block-late", "block", name)], version=1))

    assert stopped_by_agent(standin, agent) == -signal.SIGTERM
