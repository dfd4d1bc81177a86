"""A damaged local store is moved aside and what it lost is reported to the server (real server and agent)."""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime

import pytest

from endpoint_agent.report.store import NewEvent, ViolationStore
from tests.support.e2e_harness import Agent, Server, wait_for
from tests.support.enforce_procs import pid_namespaces_available
from tests.support.service_rig import policy_yaml, unique

_why_not = pid_namespaces_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


def test_a_damaged_store_is_reported_with_what_was_recovered(server: Server, agent: Agent) -> None:
    watched = unique("e2e-seen")
    server.publish(policy_yaml([("seen-standin", "report", watched)]))
    agent.standin(watched)
    proc = agent.start()
    wait_for("the violation on the server", lambda: server.items("/violations"), context=agent.log_text)
    proc.signal(signal.SIGTERM)
    proc.wait(30)

    # Events still waiting for upload when the file got damaged (the agent is stopped meanwhile).
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(300)]
    with ViolationStore.open(agent.state / "violations.sqlite3") as store:
        store.commit_tick(
            [
                NewEvent(i, "agent", now, {"event_id": i, "kind": "agent", "type": "test_marker",
                                          "detected_at": now.isoformat(), "detail": {"pad": "x" * 900}})
                for i in ids
            ]
        )  # fmt: skip
    path = agent.state / "violations.sqlite3"
    raw = bytearray(path.read_bytes())
    at = raw.index(f'"event_id": "{ids[150]}"'.encode()) // 4096 * 4096
    raw[at + 8 : at + 4096] = b"\xa5" * (4096 - 8)  # one page of the events table destroyed
    path.write_bytes(bytes(raw))

    agent.start()
    [damage] = wait_for(
        "the store_damaged event on the server",
        lambda: server.items("/agent-events", type="store_damaged"),
        context=agent.log_text,
    )
    detail = damage["detail"]
    assert ".corrupt-" in detail["moved_to"] and detail["unreadable_events"] > 0
    assert 0 < detail["recovered_pending_events"] < 300
    recovered = wait_for(
        "the recovered events on the server",
        lambda: (
            (got := server.items("/agent-events", type="test_marker"))
            and len(got) >= detail["recovered_pending_events"]
            and got
        ),
        context=agent.log_text,
    )
    assert {e["event_id"] for e in recovered} <= set(ids)  # under their own event_id: once each
    assert len(recovered) == detail["recovered_pending_events"]
