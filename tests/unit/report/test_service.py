"""The report job wired to a real Agent (real policy, real store; enforcer and server are doubles)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from endpoint_agent.agent import Agent
from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.enforce.circuit import CircuitBreaker
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.errors import ServerUnavailable
from endpoint_agent.policy import ActivePolicy, parse_policy
from endpoint_agent.report.service import agent_heartbeat, build_report_job, report_tick_seconds
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.report.uploader import Uploader
from endpoint_agent.settings import AgentSettings
from endpoint_agent.types import ProcessInfo, Snapshot
from endpoint_contract.heartbeat import Heartbeat
from tests.support.doubles import FakeClock, RecordingEnforcer, RecordingNotifier
from tests.support.fake_server import FakeServer

FAKE_PID = 9_000_000  # above Linux's PID_MAX_LIMIT: no real process has it
POLICY = """
name: test
version: 7
mode: enforce
rules:
  - {id: p2p, category: p2p, action: block, process: {name: ["qbittorrent*"]}}
  - {id: games, category: games, action: report, process: {name: ["steam"]}}
"""


class Static:
    def __init__(self) -> None:
        self.policy = ActivePolicy.from_policy(parse_policy(POLICY, "test"), "test")
        self.processes = [
            ProcessInfo(
                pid=FAKE_PID + i, ppid=FAKE_PID, name=name, username="alice", uid=1000, create_time=1.0
            )
            for i, name in enumerate(["qbittorrent", "steam", "bash"], start=1)
        ]

    def current(self) -> ActivePolicy:
        return self.policy

    def snapshot(self) -> Snapshot:
        return Snapshot(datetime.now(UTC), {p.pid: p for p in self.processes})


def settings_for(state_dir: Path, **values: object) -> AgentSettings:
    return AgentSettings.model_validate({"state_dir": state_dir, **values})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ViolationStore]:
    with ViolationStore.open(tmp_path / "v.sqlite3") as store:
        yield store


@pytest.fixture
def agent(tmp_path: Path, store: ViolationStore) -> Agent:
    clock = FakeClock(datetime(2030, 1, 2, tzinfo=UTC))
    static = Static()
    return Agent(
        policy=static,
        source=static,
        guard=Guard(),
        enforcer=RecordingEnforcer(),
        notifier=RecordingNotifier(),
        store=store,
        circuit=CircuitBreaker(clock=clock),
        break_glass=BreakGlass(tmp_path / "break-glass"),
        clock=clock,
    )


def test_the_heartbeat_says_what_the_agent_did(agent: Agent, store: ViolationStore) -> None:
    server = FakeServer()
    uploader = Uploader(store, server, clock=FakeClock())
    before = agent_heartbeat(agent.pulse(), store, uploader).to_json()
    assert "policy_version" not in before and before["counters"]["scans"] == 0
    agent.tick()
    agent.tick()
    beat = agent_heartbeat(agent.pulse(), store, uploader, policy_rejections=lambda: 2).to_json()
    Heartbeat.model_validate(beat)
    assert beat["policy_version"] == 7 and beat["mode"] == "enforce" and beat["circuit_state"] == "closed"
    assert beat["last_scan_at"] == "2030-01-02T00:00:00Z"
    assert beat["counters"] == {
        "scans": 2,
        "scan_errors": 0,
        "findings": 2,  # one per violation recorded, not per scan that saw it again
        "kills": 1,
        "dropped_events": 0,
        "rejected_events": 0,
        "queue_pending": 2,
        "policy_rejections": 2,
    }


def test_the_built_job_uploads_the_agents_violations_and_heartbeat(
    agent: Agent, store: ViolationStore, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, upload_interval=30)
    server = FakeServer()
    clock = FakeClock()
    job = build_report_job(
        settings, store=store, client=server, pulse=agent.pulse, clock=clock, rng=random.Random(2)
    )
    agent.tick()
    clock.advance(30)  # the first round comes within the first interval
    outcome = job.run()
    assert outcome is not None and outcome.ok
    assert sorted(v["rule_id"] for v in server.violations()) == ["games", "p2p"]
    assert server.heartbeats[-1]["counters"]["queue_pending"] == 0
    assert job.healthy
    job.flush()  # at shutdown: one more round while the server answers
    assert len(server.heartbeats) == 2
    assert report_tick_seconds(settings) == 1.0
    assert report_tick_seconds(settings_for(tmp_path, upload_interval=0.2)) == 0.2


def test_no_final_round_when_the_server_was_failing(
    agent: Agent, store: ViolationStore, tmp_path: Path
) -> None:
    server = FakeServer()
    clock = FakeClock()
    job = build_report_job(
        settings_for(tmp_path),
        store=store,
        client=server,
        pulse=agent.pulse,
        clock=clock,
        rng=random.Random(2),
    )
    server.fail_next(ServerUnavailable("connection refused"))
    job.run(force=True)
    requests = len(server.requests)
    job.flush()
    assert len(server.requests) == requests and not job.healthy
