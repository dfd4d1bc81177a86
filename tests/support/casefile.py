"""Policy test cases as data: tests/cases/*.yaml, each a policy, a snapshot and the findings.

description: what the case shows
policy: {name: t, version: 1, rules: [...]}      # or  policy_file: policies/default.yaml
snapshot:
  processes:
    - {pid: 100, name: qbittorrent, exe: /usr/bin/qbittorrent}   # uid 1000 / alice by default
  connections:
    - {pid: 100, proto: tcp, laddr: "0.0.0.0:6881", direction: listen}
  earlier_scans:                                   # optional: connections of the scans before this one
    - [{pid: 100, proto: tcp, raddr: "203.0.113.9:41000", direction: outbound}]
expected:                                          # exactly these findings, in any order
  - {rule_id: p2p-qbittorrent, pid: 100, action: block}
  - {rule_id: x, pid: 100, action: report, reason_contains: "...", connection: "0.0.0.0:6881"}
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from endpoint_agent.collect.behaviour import BehaviourTracker
from endpoint_agent.policy import Policy, load_policy_file
from endpoint_agent.types import Connection, Direction, Endpoint, ProcessInfo, RuleAction, Snapshot

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "cases"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseProcess(_Strict):
    pid: int
    name: str
    ppid: int = 1
    exe: str | None = None
    cmdline: list[str] = []
    username: str | None = "alice"
    uid: int | None = 1000
    sha256: str | None = None
    parent_name: str | None = None
    kernel_thread: bool = False
    package: str | None = None

    def to_info(self) -> ProcessInfo:
        return ProcessInfo(
            pid=self.pid,
            ppid=self.ppid,
            name=self.name,
            exe=self.exe,
            cmdline=tuple(self.cmdline) or ((self.exe,) if self.exe else ()),
            username=self.username,
            uid=self.uid,
            create_time=1_700_000_000.0 + self.pid,
            sha256=self.sha256,
            parent_name=self.parent_name,
            kernel_thread=self.kernel_thread,
            package=self.package,
        )


class CaseConnection(_Strict):
    pid: int | None
    proto: str = "tcp"
    laddr: str | None = None
    raddr: str | None = None
    direction: Direction
    status: str | None = None
    domain: str | None = None  # what the DNS filter learned the remote address from

    def to_connection(self) -> Connection:
        laddr, raddr = _endpoint(self.laddr), _endpoint(self.raddr)
        either = laddr or raddr
        ip = either.ip if either is not None else "0.0.0.0"
        status = self.status or ("LISTEN" if self.direction is Direction.LISTEN else "ESTABLISHED")
        if self.proto == "udp" and self.status is None:
            status = "NONE"
        family = "ipv6" if ipaddress.ip_address(ip).version == 6 else "ipv4"
        return Connection(
            self.pid, family, self.proto, laddr, raddr, status, self.direction, domain=self.domain
        )


class CaseSnapshot(_Strict):
    processes: list[CaseProcess]
    connections: list[CaseConnection] = []
    # Connections of the scans before this one (oldest first), same processes: P2P behaviour is
    # judged over a window of scans (collect.behaviour).
    earlier_scans: list[list[CaseConnection]] = []

    def to_snapshot(self, window_scans: int | None = None) -> Snapshot:
        """The last scan, with `behaviour` as the tracker built it over all the scans."""
        processes = {p.pid: p.to_info() for p in self.processes}
        tracker = BehaviourTracker(window_scans or 1)
        snapshot = Snapshot(taken_at=datetime(2024, 1, 1, tzinfo=UTC), processes=processes)
        for scan in [*self.earlier_scans, self.connections]:
            snapshot = tracker.annotate(
                Snapshot(snapshot.taken_at, processes, tuple(c.to_connection() for c in scan))
            )
        return snapshot


class Expected(_Strict):
    rule_id: str
    pid: int
    action: RuleAction
    reason_contains: list[str] = []
    connection: str | None = None  # the laddr (or raddr when no laddr) of the reported connection
    category: str | None = None
    message: str | None = None
    help_url: str | None = None


class Case(_Strict):
    description: str
    policy: dict[str, Any] | None = None
    policy_file: str | None = None
    snapshot: CaseSnapshot
    expected: list[Expected]

    @model_validator(mode="after")
    def _one_policy(self) -> Case:
        if (self.policy is None) == (self.policy_file is None):
            raise ValueError("give exactly one of policy, policy_file")
        return self

    def load_policy(self) -> Policy:
        if self.policy_file is not None:
            return load_policy_file(REPO / self.policy_file)
        return Policy.model_validate(self.policy)


def _endpoint(text: str | None) -> Endpoint | None:
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


def load_case(path: Path) -> Case:
    return Case.model_validate(yaml.safe_load(path.read_text()))


def case_files() -> list[Path]:
    return sorted(CASES_DIR.glob("*.yaml"))
