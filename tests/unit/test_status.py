"""`endpoint-agent status`: read from status.json and the store, running or not."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import psutil
import pytest

from endpoint_agent.errors import AgentError
from endpoint_agent.service import write_status
from endpoint_agent.settings import AgentSettings
from endpoint_agent.status import show_status


def status_of(settings: AgentSettings, as_json: bool = True) -> dict[str, object] | str:
    out = io.StringIO()
    code = show_status(settings, as_json=as_json, out=out)
    # exit 0 only while the agent runs: `endpoint-agent status` is a health check
    assert code == (0 if '"running": true' in out.getvalue() or "agent: running" in out.getvalue() else 3)
    return json.loads(out.getvalue()) if as_json else out.getvalue()


def sample(pid: int, create_time: float | None) -> dict[str, object]:
    return {
        "state": "running", "pid": pid, "process_create_time": create_time, "agent_version": "0.1.0",
        "policy": {"name": "corp", "version": 3, "mode": "enforce", "source": "/etc/ea/policy.yaml"},
        "mode": {"mode": "monitor", "reason": "kill-rate circuit breaker open for this policy version"},
        "circuit": {"open": True, "opened_at": "2024-05-01T12:00:00Z", "policy_version": 3},
        "break_glass": {"active": False, "path": "/etc/endpoint-agent/break-glass", "note": ""},
        "last_scan": {"at": "2024-05-01T12:00:05Z", "processes": 312, "findings": 2, "new_violations": 0},
        "scans": 12, "scan_errors": 0, "stops_total": 6, "queue": {"pending": 4, "total": 9, "dropped": 0},
        "updated_at": "2024-05-01T12:00:05Z",
    }  # fmt: skip


def test_never_ran(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    assert status_of(settings) == {"running": False, "state_dir": str(tmp_path)}
    assert "never ran" in str(status_of(settings, as_json=False))


def test_running_agent(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    write_status(settings.status_path, sample(os.getpid(), psutil.Process().create_time()))
    data = status_of(settings)
    assert isinstance(data, dict) and data["running"] is True and data["scans"] == 12
    text = str(status_of(settings, as_json=False))
    assert "agent: running" in text
    assert "policy: corp version 3" in text
    assert "mode: monitor (kill-rate circuit breaker open" in text
    assert "circuit breaker: OPEN" in text
    assert "queue: 4 pending upload" in text


def test_a_stale_status_file_is_not_running(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    # our PID, but another start time: the agent that wrote this is gone and the PID was reused
    write_status(settings.status_path, sample(os.getpid(), psutil.Process().create_time() - 100))
    data = status_of(settings)
    assert isinstance(data, dict) and data["running"] is False and data["state"] == "stopped"


def test_a_damaged_status_file_is_an_error(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    settings.status_path.write_text("{not json")
    with pytest.raises(AgentError, match="not valid JSON"):
        show_status(settings, as_json=True, out=io.StringIO())


def test_the_exec_gate_line(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    gate = {
        "state": "on", "decisions": 1204, "denied": 3, "would_block": 0, "cache_hit_rate": 0.991,
        "p50_ms": 0.04, "p99_ms": 0.3, "deadline_misses": 1, "restarts": 2, "detail": "",
    }  # fmt: skip
    write_status(
        settings.status_path, {**sample(os.getpid(), psutil.Process().create_time()), "exec_gate": gate}
    )
    text = str(status_of(settings, as_json=False))
    assert "exec gate: on (1204 decisions, 3 denied, 0 would block, cache hit rate 99.1%, p50 0.04 ms" in text
    assert "1 deadline misses, 2 restarts)" in text
    failed = {"state": "failed", "detail": "left off after 5 failure(s): the gate did not answer a ping"}
    write_status(
        settings.status_path, {**sample(os.getpid(), psutil.Process().create_time()), "exec_gate": failed}
    )
    assert "exec gate: failed: left off after 5 failure(s)" in str(status_of(settings, as_json=False))


def test_the_server_line_never_contradicts_itself(tmp_path: Path) -> None:
    """An upload done while its heartbeat is still in flight: not "not yet (1 events uploaded)"."""
    settings = AgentSettings(state_dir=tmp_path)
    status = sample(os.getpid(), psutil.Process().create_time())
    status["report"] = {
        "last_success_at": None, "last_upload_at": "2024-05-01T12:00:04Z", "last_error": None,
        "uploaded_since_start": 1,
    }  # fmt: skip
    write_status(settings.status_path, status)
    text = str(status_of(settings, as_json=False))
    assert (
        "server: 1 events uploaded since start (last upload 2024-05-01T12:00:04Z); last heartbeat pending"
        in text
    )
    status["report"] = {"last_success_at": None, "last_error": None, "uploaded_since_start": 0}
    write_status(settings.status_path, status)
    assert "server: 0 events uploaded since start (no upload yet); last heartbeat pending" in str(
        status_of(settings, as_json=False)
    )


def test_the_process_tracking_line_shows_the_repairs(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    events = {
        "mode": "events", "execs": 5000, "processes_checked": 40, "overruns": 0,
        "tracking": {
            "trusted": True, "rewalk_scans": 10, "full_walks": 1, "untracked_read": 7, "repairs": 2,
            "pid_probes": 55, "listings": 6,
        },
    }  # fmt: skip
    write_status(
        settings.status_path,
        {**sample(os.getpid(), psutil.Process().create_time()), "process_events": events},
    )
    text = str(status_of(settings, as_json=False))
    assert "process starts: events (5000 execs seen, 40 checked, 0 overruns)" in text
    assert (
        "process tracking: 2 repairs by the re-walk (every process re-read within 10 scans), 1 full walks,"
        " 55 scans by PID range, 6 by listing" in text
    )
