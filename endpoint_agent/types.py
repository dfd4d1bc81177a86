"""The core contract: what a machine looks like, and what the policy says about it.

Everything in the pipeline speaks these records (collect -> evaluate -> decide ->
enforce -> record -> upload); `Violation`, what is recorded and uploaded, is the wire
contract's (endpoint_contract/events.py), built by endpoint_agent/report/violation.py. They are
frozen so a snapshot can be shared between stages without anyone mutating it behind another's back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

# What the agent did and how severe it is, and the violation record: the wire contract's, defined once.
from endpoint_contract.events import Violation as Violation
from endpoint_contract.text import escape_text, needs_escape
from endpoint_contract.vocabulary import Outcome as Outcome
from endpoint_contract.vocabulary import Severity as Severity


class Direction(StrEnum):
    LISTEN = "listen"
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class RuleAction(StrEnum):
    """What a policy rule asks for."""

    ALLOW = "allow"
    REPORT = "report"
    BLOCK = "block"


class Enforce(StrEnum):
    """How a `block` rule is enforced: stop the program, or refuse its connections."""

    PROCESS = "process"
    CONNECTION = "connection"  # nftables sets (Linux) and the DNS filter; the program keeps running


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Connection:
    """One socket of one process (pid None when the owner could not be resolved)."""

    pid: int | None
    family: str  # "ipv4" | "ipv6"
    proto: str  # "tcp" | "udp"
    laddr: Endpoint | None
    raddr: Endpoint | None
    status: str  # psutil status, e.g. "LISTEN", "ESTABLISHED", "NONE"
    direction: Direction
    netns: str | None = None  # network namespace id when it is not the agent's own
    # The name the remote address was resolved from (learned from DNS answers), or a DNS query's name.
    domain: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "laddr": str(self.laddr) if self.laddr else None,
            "raddr": str(self.raddr) if self.raddr else None,
            "proto": self.proto,
            "status": self.status,
            "direction": self.direction.value,
        }
        if self.netns is not None:
            out["netns"] = self.netns
        if self.domain is not None:
            out["domain"] = self.domain
        return out


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process instance. `(pid, create_time)` identifies it; a PID alone does not."""

    pid: int
    ppid: int
    name: str
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    username: str | None = None
    uid: int | None = None
    create_time: float = 0.0
    sha256: str | None = None
    parent_name: str | None = None
    kernel_thread: bool = False
    # True when psutil could not read some attribute (vanished or denied mid-scan).
    partial: bool = False
    # The system package that owns `exe` (dpkg/rpm/...), None when unknown or unowned.
    package: str | None = None

    def __post_init__(self) -> None:
        # The collection boundary: bytes that are not UTF-8 (read with surrogateescape) become
        # backslash escapes here, so no stage, store or request downstream ever sees a surrogate.
        # ASCII (nearly every process) is checked in one C call per field and left alone.
        if not (
            self.name.isascii()
            and (self.exe is None or self.exe.isascii())
            and (self.username is None or self.username.isascii())
            and (self.parent_name is None or self.parent_name.isascii())
            and "".join(self.cmdline).isascii()
        ):
            self._escape_text()

    def _escape_text(self) -> None:
        for name in ("name", "exe", "username", "parent_name"):
            value = getattr(self, name)
            if value is not None and needs_escape(value):
                object.__setattr__(self, name, escape_text(value))
        if any(needs_escape(arg) for arg in self.cmdline):
            object.__setattr__(self, "cmdline", tuple(escape_text(arg) for arg in self.cmdline))

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.create_time)

    @property
    def cmdline_str(self) -> str:
        return " ".join(self.cmdline)


@dataclass(frozen=True, slots=True)
class P2PFeatures:
    """Peer-to-peer behaviour of one process over a sliding window of scans (collect.behaviour).

    Only facts: counts of distinct values seen in the window. The policy engine turns them into a
    score. A "peer" port is above 1024 and not a well-known service port (behaviour.SERVICE_PORTS).
    """

    scans: int  # scans in the window that saw the process
    peers: int  # distinct remote IPs met on a peer port, either direction
    outbound_peers: int  # distinct remote ip:port the process connected to on a peer port
    outbound_peer_ips: int
    outbound_peer_ports: int
    inbound_peers: int  # distinct remote ip:port connected to one of its listening peer ports
    inbound_peer_ips: int
    inbound_peer_ports: int  # distinct remote (source) ports of those
    listening_ports: tuple[int, ...] = ()  # its listening peer ports that had inbound peers
    tcp_udp_ports: tuple[int, ...] = ()  # local peer ports bound for both TCP and UDP
    tcp_udp_peers: int = 0  # remote IPs it reached over both TCP and (connected) UDP on peer ports
    bittorrent_ports: tuple[int, ...] = ()  # well-known BitTorrent ports it used, local or remote
    lpd: bool = False  # a socket on the BitTorrent local peer discovery port/group
    peer_networks: int = 0  # distinct networks (IPv4 /16, IPv6 /32) of the peers, either direction
    two_way_peers: int = 0  # remote IPs it both connected to and accepted, on peer ports
    sample_peers: tuple[str, ...] = ()  # a few peers, for the evidence


@dataclass(frozen=True, slots=True)
class SnapshotDelta:
    """How a snapshot differs from the previous one of the same source, for stages that keep state.

    Every process of the snapshot whose pid is not in `changed` has the very same `ProcessInfo`
    object it had in the snapshot whose delta's `token` is `base` (pids absent there are in
    `changed`); `removed` are the pids that snapshot had and this one has not. A stage that saw
    that snapshot last may skip the others; any other stage must ignore the delta.
    """

    base: object
    token: object
    changed: frozenset[int]
    removed: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_at: datetime
    processes: dict[int, ProcessInfo]
    connections: tuple[Connection, ...] = ()
    # (pid, create_time) -> behaviour over the last scans; filled by collect.behaviour.BehaviourTracker.
    behaviour: dict[tuple[int, float], P2PFeatures] = field(default_factory=dict)
    delta: SnapshotDelta | None = None  # None: compare with nothing (a full walk, a partial snapshot)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One condition that matched: which attribute, against which pattern, with which value."""

    attribute: str
    pattern: str
    value: str

    def __str__(self) -> str:
        return f"{self.attribute} {self.value!r} matched {self.pattern!r}"


@dataclass(frozen=True, slots=True)
class Finding:
    """What the (pure) engine says about one process, or one process and one connection."""

    rule_id: str
    category: str
    action: RuleAction  # REPORT or BLOCK; ALLOW rules never produce findings
    process: ProcessInfo
    reason: str
    evidence: tuple[Evidence, ...] = ()
    connection: Connection | None = None
    message: str = ""
    help_url: str | None = None
    enforce: Enforce = Enforce.PROCESS  # a `block` finding with CONNECTION never stops the process
    severity: Severity = Severity.MEDIUM
