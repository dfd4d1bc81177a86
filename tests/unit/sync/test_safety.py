"""The dry-run verdict on synthetic snapshots, with the real engine and a real or stub guard."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.policy import compile_policy, parse_policy
from endpoint_agent.sync.safety import DryRun
from endpoint_agent.types import ProcessInfo, Snapshot
from tests.unit.sync.conftest import policy_yaml


def snapshot(names: list[str]) -> Snapshot:
    procs = {
        pid: ProcessInfo(pid=pid, ppid=1, name=name, exe=f"/opt/test/{name}", create_time=1000.0 + pid)
        for pid, name in enumerate(names, start=100)
    }
    return Snapshot(taken_at=datetime(2030, 1, 1, tzinfo=UTC), processes=procs)


class ProtectsNames:
    def __init__(self, *names: str) -> None:
        self.names = names

    def check(self, proc: ProcessInfo) -> object | None:
        return "system component" if proc.name in self.names else None


def compiled(name: str) -> object:
    return compile_policy(parse_policy(policy_yaml(1, name=name), "<test>"))


MACHINE = ["bash", "sshd", "firefox", *[f"worker-{i}" for i in range(17)]]  # 20 processes


def test_a_narrow_policy_is_safe() -> None:
    verdict = DryRun(lambda: snapshot(MACHINE), ProtectsNames("sshd")).assess(compiled("firefox"))
    assert verdict.safe and (verdict.processes, verdict.would_stop) == (20, 1)


def test_blocking_a_protected_process_is_unsafe() -> None:
    verdict = DryRun(lambda: snapshot(MACHINE), ProtectsNames("sshd")).assess(compiled("ssh*"))
    assert not verdict.safe
    assert verdict.protected == ("sshd (pid 101, rule block-standin): system component",)
    assert "protected" in verdict.reason


def test_blocking_more_than_the_share_is_unsafe() -> None:
    run = DryRun(lambda: snapshot(MACHINE), ProtectsNames(), max_share=0.10)
    assert run.assess(compiled("worker-[01]")).safe  # 2 of 20 = 10%: not more than the share
    verdict = run.assess(compiled("worker-[012]"))
    assert not verdict.safe and verdict.would_stop == 3
    assert verdict.reason == "it would stop 3 of 20 running processes, more than the allowed share of 10%"


def test_blocking_everything_is_unsafe_with_the_real_guard() -> None:
    # PID 1 and the agent itself are in every real snapshot
    procs = snapshot(MACHINE).processes | {1: ProcessInfo(pid=1, ppid=0, name="systemd", exe="/sbin/init")}
    verdict = DryRun(lambda: Snapshot(datetime(2030, 1, 1, tzinfo=UTC), procs), Guard()).assess(compiled("*"))
    assert not verdict.safe and "systemd (pid 1, rule block-standin): PID 1" in verdict.protected


def test_the_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="max_share"):
        DryRun(lambda: snapshot([]), ProtectsNames(), max_share=0)
