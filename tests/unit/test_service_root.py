"""The composition root: parts built once from the settings; registered parts' jobs, status, listeners."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint_agent.errors import SettingsError
from endpoint_agent.service import JobSpec, Part, Service, build_service
from endpoint_agent.settings import AgentSettings
from tests.support.doubles import RecordingEnforcer, RecordingNotifier

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = AgentSettings(
        state_dir=tmp_path,
        policy=REPO / "policies" / "default.yaml",
        process_events=False,
        notify=False,
        exec_gate="off",  # never on this machine's mounts (a test of the gate has its own namespace)
        dns_filter="off",  # never this machine's resolver
    )
    service = build_service(settings, enforcer=RecordingEnforcer(), notifier=RecordingNotifier())
    try:
        yield service
    finally:
        service.close()


def test_each_part_is_built_once_and_the_agent_runs_on_them(service: Service) -> None:
    active = service.policy.current()
    assert active is not None and active.name == "corporate-baseline"
    service.scan()
    status = json.loads(service.settings.status_path.read_text())
    assert status["scans"] == 1 and status["state"] == "running"
    assert status["process_events"] == {"mode": "polling"}  # the reaction part, off by the settings
    assert status["policy"]["name"] == "corporate-baseline"
    assert [j.name for j in service.jobs()] == ["scan"]
    assert status["exec_gate"] == {"state": "off"}
    service.scan()  # the agent's own CPU time, to the microsecond (the idle benchmark reads it)
    after = json.loads(service.settings.status_path.read_text())
    assert 0 < status["cpu_seconds"] < after["cpu_seconds"] <= time.process_time()


def test_registered_parts_add_jobs_status_and_close_in_reverse(service: Service) -> None:
    closed: list[str] = []

    def tick() -> None:
        pass

    service.register(
        Part("first", jobs=[JobSpec("first-job", tick, 5.0)], close=lambda: closed.append("first"))
    )
    service.register(Part("second", status=lambda: {"healthy": True}, close=lambda: closed.append("second")))
    with pytest.raises(ValueError, match="already registered"):
        service.register(Part("first"))
    assert [j.name for j in service.jobs()] == ["scan", "first-job"]
    assert service.status("running")["second"] == {"healthy": True}
    service.close()
    assert closed == ["second", "first"]


def test_a_failing_listener_stops_no_other(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    heard: list[str] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    service.policy_activated.connect(broken)
    service.policy_activated.connect(lambda: heard.append("after"))
    service.policy_activated.emit()
    assert heard == ["after"]
    assert "a listener of policy_activated failed" in caplog.text
    # The scan is the first listener: a new policy applies to what already runs.
    assert json.loads(service.settings.status_path.read_text())["scans"] == 1


def test_a_start_up_problem_is_one_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no policy source"):
        build_service(AgentSettings(state_dir=tmp_path, exec_gate="off", dns_filter="off"))
