"""One Agent on a real policy and a real store, with doubles for the enforcer, notifier and clock.

Processes here are records only (PIDs above any real pid_max), so nothing can be signalled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from endpoint_agent.agent import Agent
from endpoint_agent.enforce.breakglass import BreakGlass
from endpoint_agent.enforce.circuit import CircuitBreaker, CircuitState
from endpoint_agent.enforce.guard import Guard
from endpoint_agent.policy import ActivePolicy, parse_policy
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.types import ProcessInfo, Snapshot
from tests.support.doubles import FakeClock, RecordingEnforcer, RecordingNotifier

FAKE_PID = 9_000_000  # above Linux's PID_MAX_LIMIT: no real process has it

POLICY = """
name: test
version: {version}
mode: {mode}
rules:
  - id: p2p
    category: p2p
    action: block
    message: "Peer-to-peer clients are not allowed."
    help_url: "https://intranet.example.com/aup"
    process: {{name: ["qbittorrent*"]}}
  - id: remote
    category: remote-access
    action: block
    process: {{name: ["ssh*"]}}
  - id: games
    category: games
    action: report
    process: {{name: ["steam"]}}
"""


def active(mode: str = "enforce", version: int = 1) -> ActivePolicy:
    return ActivePolicy.from_policy(parse_policy(POLICY.format(mode=mode, version=version), "test"), "test")


class Static:
    """A policy provider and a snapshot source whose answers the test sets."""

    def __init__(self, policy: ActivePolicy | None, processes: list[ProcessInfo]) -> None:
        self.policy = policy
        self.processes = processes
        self.fail: Exception | None = None

    def current(self) -> ActivePolicy | None:
        return self.policy

    def snapshot(self) -> Snapshot:
        if self.fail is not None:
            raise self.fail
        return Snapshot(datetime.now(UTC), {p.pid: p for p in self.processes})


def proc(n: int, name: str, create_time: float = 100.0) -> ProcessInfo:
    return ProcessInfo(
        pid=FAKE_PID + n, ppid=FAKE_PID, name=name, exe=f"/nonexistent/{name}", username="alice", uid=1000,
        create_time=create_time,
    )  # fmt: skip


class Rig:
    def __init__(
        self, tmp_path: Path, static: Static, *, max_kills: int = 5, store: ViolationStore | None = None
    ):
        self.clock = FakeClock()
        self.static = static
        self.enforcer = RecordingEnforcer()
        self.notifier = RecordingNotifier()
        self.glass_path = tmp_path / "break-glass"
        self.store = store or ViolationStore.open(tmp_path / "violations.sqlite3")
        self.agent = self.make(max_kills)

    def make(self, max_kills: int = 5) -> Agent:
        state = CircuitState.from_json(self.store.get_meta("circuit"))
        return Agent(
            policy=self.static,
            source=self.static,
            guard=Guard(),
            enforcer=self.enforcer,
            notifier=self.notifier,
            store=self.store,
            circuit=CircuitBreaker(clock=self.clock, max_kills=max_kills, state=state),
            break_glass=BreakGlass(self.glass_path),
            clock=self.clock,
        )

    def violations(self) -> list[dict[str, object]]:
        return [e.payload for e in self.store.events(kind="violation")]
