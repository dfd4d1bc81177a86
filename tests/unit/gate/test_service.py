"""Wiring: the gate's configuration follows the agent's policy and safety rails; the setting."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.errors import SettingsError
from endpoint_agent.gate import service
from endpoint_agent.gate.service import _Source, gate_wanted
from endpoint_agent.policy import ActivePolicy, parse_policy
from endpoint_agent.settings import AgentSettings, load_settings

POLICY = "name: p\nversion: 4\nmode: enforce\nrules:\n  - {id: r, action: block, process: {name: x}}\n"


@dataclass
class FakeProvider:
    active: ActivePolicy | None

    def current(self) -> ActivePolicy | None:
        return self.active


class FakeAgent:
    def __init__(self, active: ActivePolicy | None) -> None:
        self.policy_provider = FakeProvider(active)
        self.circuit = False

    def gate_circuit_open(self, version: int) -> bool:
        return self.circuit


def source(tmp_path: Path, active: ActivePolicy | None) -> tuple[_Source, FakeAgent, Path]:
    agent = FakeAgent(active)
    glass = tmp_path / "break-glass"
    settings = AgentSettings(state_dir=tmp_path, protected_extra=("mytool",))
    return _Source(settings, agent, BreakGlass(glass), agent.policy_provider), agent, glass  # type: ignore[arg-type]


def test_the_config_follows_break_glass_circuit_and_an_unsafe_policy(tmp_path: Path) -> None:
    active = ActivePolicy.from_policy(parse_policy(POLICY, "p"), "p.yaml")
    src, agent, glass = source(tmp_path, active)
    config = src()
    assert config is not None and config.enforce and config.policy["version"] == 4
    assert config.agent_pid == os.getpid() and config.protected_extra == ("mytool",)
    glass.touch(mode=0o600)
    config = src()
    assert config is not None and not config.enforce and "break-glass" in config.mode_reason
    glass.unlink()
    agent.circuit = True
    config = src()
    assert config is not None and not config.enforce and "circuit" in config.mode_reason
    agent.circuit = False
    agent.policy_provider.active = ActivePolicy(
        active.compiled, "p", 4, "enforce", "p.yaml", monitor_reason="policy unsafe: too broad"
    )
    config = src()
    assert config is not None and not config.enforce and config.mode_reason == "policy unsafe: too broad"


def test_no_policy_no_gate_config(tmp_path: Path) -> None:
    src, _, _ = source(tmp_path, None)
    assert src() is None


def test_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({}, environ={"ENDPOINT_AGENT_EXEC_GATE": "OFF"}).exec_gate == "off"
    config = tmp_path / "c.yaml"
    config.write_text("exec_gate: off\n")  # YAML 1.1 reads a bare off as false
    assert load_settings({"config": str(config)}, environ={}).exec_gate == "off"
    with pytest.raises(SettingsError, match="exec_gate"):
        load_settings({"exec_gate": "sometimes"}, environ={})
    monkeypatch.setattr(service, "unavailable_reason", lambda: "the exec gate needs root")
    with pytest.raises(SettingsError, match="exec_gate: on, but the exec gate needs root"):
        gate_wanted(AgentSettings(state_dir=tmp_path, exec_gate="on"))
    assert not gate_wanted(AgentSettings(state_dir=tmp_path, exec_gate="auto"))
    monkeypatch.setattr(service, "unavailable_reason", lambda: None)
    assert gate_wanted(AgentSettings(state_dir=tmp_path))
    assert not gate_wanted(AgentSettings(state_dir=tmp_path, enforce_scope_pid=os.getpid()))
    assert not gate_wanted(AgentSettings(state_dir=tmp_path, exec_gate="off"))


def test_heartbeat_counters_say_whether_the_gate_is_on_or_left_off() -> None:
    from endpoint_agent.gate.protocol import GateConfig
    from endpoint_agent.gate.service import ExecGate
    from endpoint_agent.gate.supervisor import GateSupervisor
    from endpoint_agent.report.heartbeat import Heartbeat

    config = GateConfig(policy={"name": "p", "version": 1}, agent_pid=1, enforce=True)
    sup = GateSupervisor(lambda: config, on_report=lambda r: None, on_event=lambda t, d: None)
    gate = ExecGate(sup, None)  # type: ignore[arg-type]
    sup.state, sup.restarts, sup.stats = "failed", 5, {"denied": 7}
    counters = gate.counters()
    assert counters == {
        "exec_gate_on": 0,
        "exec_gate_failed": 1,
        "exec_gate_denials": 7,
        "exec_gate_restarts": 5,
    }
    Heartbeat(agent_version="0", counters=counters)  # names and values the server accepts
