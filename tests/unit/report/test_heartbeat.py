"""The heartbeat body, checked against the server's own request model."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from endpoint_agent.report.heartbeat import Heartbeat, counters
from endpoint_contract.heartbeat import Heartbeat as HeartbeatRequest  # the server validates with it


def test_full_heartbeat_is_what_the_server_takes() -> None:
    beat = Heartbeat(
        agent_version="0.1.0",
        policy_version=3,
        mode="enforce",
        last_scan_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        circuit_state="closed",
        counters=counters(scans=120, findings=4, kills=1, dropped_events=0, policy_rejections=2),
    )
    body = beat.to_json()
    assert body["last_scan_at"] == "2030-01-02T03:04:05Z"
    parsed = HeartbeatRequest.model_validate(body)
    assert parsed.counters == {
        "scans": 120,
        "findings": 4,
        "kills": 1,
        "dropped_events": 0,
        "policy_rejections": 2,
    }
    assert (parsed.policy_version, parsed.mode, parsed.circuit_state) == (3, "enforce", "closed")


def test_a_fresh_agent_sends_only_what_it_knows() -> None:
    body = Heartbeat(agent_version="0.1.0").to_json()
    assert body == {"agent_version": "0.1.0", "counters": {}}
    HeartbeatRequest.model_validate(body)


def test_counters_helper_leaves_out_unknown_and_clamps() -> None:
    assert counters(scans=3, kills=None, findings=-2) == {"scans": 3, "findings": 0}


@pytest.mark.parametrize(
    "bad",
    [
        {"agent_version": ""},
        {"agent_version": "1", "counters": {"bad name": 1}},
        {"agent_version": "1", "counters": {"scans": -1}},
        {"agent_version": "1", "counters": {"scans": 1.5}},
        {"agent_version": "1", "counters": {f"c{i}": 1 for i in range(65)}},
        {"agent_version": "1", "last_scan_at": datetime(2030, 1, 1)},
    ],
)
def test_invalid_heartbeats_are_refused_before_sending(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Heartbeat(**bad)  # type: ignore[arg-type]
