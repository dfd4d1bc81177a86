"""What the agent and its gate process say to each other (JSON messages on a SOCK_SEQPACKET pair).

At start the agent writes a `GateConfig` (JSON) to the gate's stdin and closes it. Then:

agent -> gate   {"op": "ping", "seq": n}         answered by {"op": "pong", "seq": n, "stats": {...}}
                {"op": "mode", "enforce": bool, "reason": str}   break-glass, circuit breaker, ...
gate -> agent   {"op": "ready", "mounts": n}     marks placed, events being answered
                {"op": "report", ...}            a denial or would-block (see `Report`), rate-limited
                {"op": "unsafe", "reason": str}  the dry run put the gate in monitor mode
                {"op": "failed", "error": str}   the gate could not start (then it exits)

Messages are datagrams: each is whole or not sent. The gate never blocks on the socket: when the
agent does not read, its reports are dropped and counted (`reports_dropped`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_MESSAGE = 64 * 1024
LATE = "late"  # Report.outcome of an exec allowed at its deadline and judged a denial since


@dataclass(frozen=True)
class GateConfig:
    policy: dict[str, Any]  # the policy model as JSON (policy.model_dump(mode="json"))
    agent_pid: int
    enforce: bool  # the effective mode the agent computed (policy mode, break-glass, circuit, ...)
    mode_reason: str = ""
    protected_extra: tuple[str, ...] = ()
    deadline_ms: float = 100.0
    unsafe_share: float = 0.10
    ignore_marks: bool = True  # let the kernel skip system files already allowed
    report_interval_s: float = 60.0  # at most one report per (rule, file, user) in this time
    # Whose mount namespace to mark: None, the gate's own; 1, the machine's (exec_gate_mounts: init).
    mounts_of_pid: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GateConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("gate config must be a JSON object")
        data["protected_extra"] = tuple(data.get("protected_extra") or ())
        return cls(**data)


@dataclass(frozen=True)
class Report:
    """A denial (or a would-block in monitor mode) for the agent to record and notify."""

    # "denied" | "would_block"; "late": allowed at its deadline, judged a denial since (stop it if it runs)
    outcome: str
    rule_id: str
    category: str
    reason: str
    message: str
    help_url: str | None
    pid: int
    uid: int | None
    username: str | None
    exe: str
    sha256: str | None
    evidence: list[list[str]] = field(default_factory=list)
    policy_version: int = 0
    at: float = 0.0  # wall-clock time of the decision

    def to_message(self) -> dict[str, Any]:
        return {"op": "report", **asdict(self)}

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Report:
        fields = {k: v for k, v in msg.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def encode(msg: dict[str, Any]) -> bytes:
    data = json.dumps(msg, separators=(",", ":"), default=str).encode("utf-8", "surrogateescape")
    return data[:MAX_MESSAGE]


def decode(data: bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(data.decode("utf-8", "surrogateescape"))
    except (ValueError, UnicodeDecodeError):
        return None
    return msg if isinstance(msg, dict) and isinstance(msg.get("op"), str) else None


__all__ = ["LATE", "MAX_MESSAGE", "GateConfig", "Report", "decode", "encode"]
