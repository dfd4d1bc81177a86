"""An in-process agent on the real collector whose stops are only recorded (RecordingEnforcer),
for the tests that drive it with real exec events; and the small waits those tests share.

KILL SAFETY: its guard is scoped to the test process (only its descendants could be signalled),
and the enforcer is a double that signals nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from endpoint_agent.agent import Agent
from endpoint_agent.clock import SystemClock
from endpoint_agent.collect.incremental import IncrementalCollector
from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.enforce.circuit import CircuitBreaker
from endpoint_agent.enforce.scope import ScopedGuard
from endpoint_agent.policy import ActivePolicy, parse_policy
from endpoint_agent.report.store import ViolationStore
from tests.support.doubles import RecordingEnforcer, RecordingNotifier

NOT_THE_AGENT = 9_000_003  # the agent under test is this process; its children must not count as its own


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"  # <= 15 characters: the kernel's comm keeps it whole


def policy_yaml(blocked: str) -> str:
    return (
        "name: reaction-test\nversion: 1\nmode: enforce\nrules:\n"
        f'  - id: standin\n    category: p2p\n    action: block\n    process:\n      name: ["{blocked}"]\n'
    )


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Policy:
    def __init__(self, text: str) -> None:
        self.active = ActivePolicy.from_policy(parse_policy(text, "test"), "test")

    def current(self) -> ActivePolicy:
        return self.active


def recording_agent(
    tmp_path: Path, blocked: str
) -> tuple[Agent, IncrementalCollector, RecordingEnforcer, ViolationStore]:
    """An in-process agent on the real collector; stops are only recorded. The caller closes the store."""
    collector = IncrementalCollector()
    enforcer = RecordingEnforcer()
    store = ViolationStore.open(tmp_path / "violations.sqlite3")
    clock = SystemClock()
    agent = Agent(
        policy=Policy(policy_yaml(blocked)),
        source=collector,
        guard=ScopedGuard(os.getpid(), agent_pid=NOT_THE_AGENT),
        enforcer=enforcer,
        notifier=RecordingNotifier(),
        store=store,
        circuit=CircuitBreaker(clock=clock),
        break_glass=BreakGlass(tmp_path / "break-glass"),
        clock=clock,
    )
    return agent, collector, enforcer, store
