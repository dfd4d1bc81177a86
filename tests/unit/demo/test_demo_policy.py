"""The demo's derived policy: enforce mode, yet only its own stand-in can be stopped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from demo.policy import DEMO_RULE_ID, check_safe, derive
from endpoint_agent.policy import compile_policy, evaluate, parse_policy
from endpoint_agent.types import Connection, Direction, Endpoint, ProcessInfo, RuleAction, Snapshot

BASELINE = Path(__file__).resolve().parents[3] / "policies" / "default.yaml"
NAME, EXE = "qbt-demo-abc123", "/tmp/endpoint-demo-x1/qbt-demo-abc123"
FAKE_PID = 9_000_000


def proc(n: int, name: str, exe: str) -> ProcessInfo:
    return ProcessInfo(
        pid=FAKE_PID + n, ppid=1, name=name, exe=exe, username="alice", uid=1000, create_time=1.0
    )


def test_enforce_mode_with_a_single_block_rule_for_the_standin() -> None:
    policy = parse_policy(derive(BASELINE, name=NAME, exe=EXE), "demo")
    baseline = parse_policy(BASELINE.read_text(), "baseline")
    assert str(policy.mode) == "enforce"
    assert [r.id for r in policy.rules if r.action is RuleAction.BLOCK] == [DEMO_RULE_ID]
    assert [r.id for r in policy.rules][:-1] == [r.id for r in baseline.rules]  # nothing of the baseline lost
    assert any(r.action is RuleAction.BLOCK for r in baseline.rules)  # so there was something to defuse


def test_real_p2p_clients_are_only_reported_and_the_standin_is_blocked() -> None:
    compiled = compile_policy(parse_policy(derive(BASELINE, name=NAME, exe=EXE), "demo"))
    processes = [
        proc(1, "qbittorrent", "/usr/bin/qbittorrent"),
        proc(2, "transmission-gtk", "/usr/bin/transmission-gtk"),
        proc(3, NAME, EXE),
        proc(4, NAME, "/home/alice/" + NAME),  # same name elsewhere: not the demo's
    ]
    listen = Connection(
        FAKE_PID + 5, "ipv4", "tcp", Endpoint("0.0.0.0", 6881), None, "LISTEN", Direction.LISTEN
    )
    processes.append(proc(5, "rtorrent-like", "/opt/x/rtorrent-like"))
    snapshot = Snapshot(datetime.now(UTC), {p.pid: p for p in processes}, (listen,))
    findings = evaluate(snapshot, compiled)
    blocked = {f.process.pid for f in findings if f.action is RuleAction.BLOCK}
    assert blocked == {FAKE_PID + 3}
    reported = {f.process.pid for f in findings if f.action is RuleAction.REPORT}
    assert {FAKE_PID + 1, FAKE_PID + 2, FAKE_PID + 5} <= reported


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["rules"][0].update(action="block"),
        lambda d: d["rules"][-1]["process"].update(name=["*"]),
        lambda d: d["rules"][-1]["process"].pop("path"),
        lambda d: d["rules"][-1].update(network={"local_port": 6881}),
        lambda d: d.update(unapproved={"action": "block"}),
    ],
)
def test_the_safety_check_refuses_anything_broader(tamper: object) -> None:
    data = yaml.safe_load(derive(BASELINE, name=NAME, exe=EXE))
    tamper(data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"^demo "):
        check_safe(yaml.safe_dump(data), name=NAME, exe=EXE)
