"""The supervisor with real processes that are not gates: crashes and silence, backoff, giving up."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

from endpoint_agent.gate.protocol import GateConfig
from endpoint_agent.gate.supervisor import GateSupervisor

CONFIG = GateConfig(policy={"name": "p", "version": 1}, agent_pid=1, enforce=True)


def run_until(sup: GateSupervisor, done: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, sup.status()
        time.sleep(0.02)


def fake_python(tmp_path: Path, body: str) -> str:
    """An 'interpreter' that ignores the gate's arguments and does `body` instead."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport time, sys\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_crashing_gate_is_restarted_with_backoff_then_left_off(tmp_path: Path) -> None:
    events: list[tuple[str, Mapping[str, object]]] = []
    sup = GateSupervisor(
        lambda: CONFIG,
        on_report=lambda r: None,
        on_event=lambda t, d: events.append((t, d)),
        ping_seconds=0.02,
        max_failures=3,
        backoff=(0.05, 0.1),
        python=fake_python(tmp_path, "sys.exit(3)"),
    )
    sup.start()
    try:
        run_until(sup, lambda: sup.state == "failed")
    finally:
        sup.stop()
    assert [t for t, _ in events] == ["gate_failed"] * 3
    assert events[-1][1]["left_off"] is True and "exited with status 3" in str(events[0][1]["reason"])
    status = sup.status()
    assert status["failures"] == 3 and status["restarts"] == 2 and "left off" in str(status["detail"])


def test_a_silent_gate_is_killed(tmp_path: Path) -> None:
    events: list[str] = []
    sup = GateSupervisor(
        lambda: CONFIG,
        on_report=lambda r: None,
        on_event=lambda t, d: events.append(str(d["reason"])),
        ping_seconds=0.02,
        start_seconds=0.3,
        max_failures=1,
        python=fake_python(tmp_path, "time.sleep(600)"),
    )
    sup.start()
    try:
        run_until(sup, lambda: sup.state == "failed")
        assert sup.pid is None  # killed, not left behind
    finally:
        sup.stop()
    assert events and "did not start within 0.3s" in events[0]
