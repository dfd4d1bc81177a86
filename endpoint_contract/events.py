"""The events an agent records and uploads (`POST /api/v1/events`), defined once.

The agent builds a `Violation` (validating what it writes), stores its JSON text once and uploads
that text as is (endpoint_agent/report/store.py, uploader.py); the server validates the same model
and stores it. `scan --json`, `endpoint-agent violations --json`, the server's `GET /violations`
and `endpoint-admin violations` all show these keys (`VIOLATION_KEYS`), documented in
server_stub/API.md.

Text is bounded here (`SHORT_MAX`, `TEXT_MAX`); the agent clips before it builds a record
(endpoint_contract/text.py), so a record it writes is always one the server accepts.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, model_validator

from endpoint_contract.bounds import INT_MAX, Timestamp, json_problem
from endpoint_contract.vocabulary import Outcome, Severity

SHORT_MAX = 256  # user names, host names, OS names
TEXT_MAX = 8192  # names, paths, reasons, evidence values (after escaping)
MAX_EVIDENCE = 32

Short = Annotated[str, StringConstraints(max_length=SHORT_MAX)]
Long = Annotated[str, StringConstraints(max_length=TEXT_MAX)]
# Canonical text of a UUID (what str(uuid.uuid4()) gives): acknowledged back exactly as sent.
EventId = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
RuleIdText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Pid = Annotated[int, Field(ge=0, le=2**32)]


TEXT_CHECKED = "text_checked"
"""Validation context key: the caller checked the JSON text for NUL and lone surrogates
(server_stub/batch.py), so only what no type bounds is walked."""


def _check_values(value: Any) -> Any:
    """Every value, typed or extra, is held to endpoint_contract/bounds.py (depth, sizes, text, range)."""
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class _Event(BaseModel):
    """Common to every event; unknown extra keys are kept (a newer agent may send more)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="after")
    def _bounded(self, info: ValidationInfo) -> Self:
        # After the fields, not before: no copy of the input is made, and JSON is validated as JSON.
        # Typed fields are bounded by their types except for NUL and lone surrogates in text; a
        # caller that ruled those out in the JSON text (TEXT_CHECKED) has only the untyped parts walked.
        if info.context and info.context.get(TEXT_CHECKED):
            self.check_untyped()
        else:
            _check_values(self.model_dump())
        return self

    def check_untyped(self) -> None:
        """This validator's check of an event whose JSON text was checked (TEXT_CHECKED): what no
        field type bounds held to endpoint_contract/bounds.py; raises ValueError. (The server's
        derived validator, server_stub/batch.py, runs it after validating without this validator.)"""
        untyped = self._untyped()
        if untyped:
            _check_values(untyped)

    def _untyped(self) -> dict[str, Any]:
        """What no field type bounds: the extra keys."""
        return self.model_extra or {}


class ConnectionRecord(BaseModel):
    """The connection a network rule matched; further keys (direction, netns...) are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    laddr: Short | None = None
    raddr: Short | None = None
    proto: Short | None = None
    status: Short | None = None
    domain: Short | None = None  # the name it was resolved from, when known


class EvidenceRecord(BaseModel):
    """One condition the engine matched: which attribute, against which pattern, with which value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: Short
    pattern: Long
    value: Long


class Violation(_Event):
    """One violation: a finding after the agent decided and acted."""

    kind: Literal["violation"] = "violation"
    event_id: EventId
    detected_at: Timestamp
    rule_id: RuleIdText
    category: Annotated[str, StringConstraints(max_length=200)]
    # Agents older than severity sent none; their rules had the policy default.
    severity: Severity = Severity.MEDIUM
    action: Outcome
    pid: Pid
    process_name: Long
    exe: Long | None = None
    sha256: Sha256 | None = None
    cmdline: Long | None = None
    ppid: Pid | None = None
    parent_name: Long | None = None
    username: Short | None = None
    evidence: Annotated[list[EvidenceRecord], Field(max_length=MAX_EVIDENCE)] = Field(default_factory=list)
    reason: Long
    policy_version: Annotated[int, Field(ge=0, le=INT_MAX)]
    connection: ConnectionRecord | None = None
    first_seen: Timestamp | None = None
    last_seen: Timestamp | None = None
    create_time: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    detail: Long | None = None  # what the enforcer said ("protected: sshd", "already stopped", ...)
    # What saw it when not the scan: "dns" (the DNS filter), "exec_gate" (before the program ran).
    source: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")] | None = None
    # Who saw it: the agent writes hostname and os; host_id is the server's name for the host
    # (the server sets it, and hostname, from the authenticated node key: a body cannot pose as another host).
    hostname: Short | None = None
    host_id: Short | None = None
    os: Short | None = None

    def _untyped(self) -> dict[str, Any]:
        extra = dict(self.model_extra or {})
        if self.connection is not None and self.connection.model_extra:
            extra["connection"] = self.connection.model_extra
        return extra

    def to_json(self) -> dict[str, Any]:
        """The JSON object (every contract key present; `connection` only for network rules)."""
        out = self.model_dump(mode="json", exclude={"connection"} if self.connection is None else None)
        for key in OMIT_WHEN_NONE:
            if out.get(key) is None:
                out.pop(key, None)
        if out.get("connection") and out["connection"].get("domain") is None:
            out["connection"].pop("domain", None)
        return out

    def to_json_text(self) -> str:
        """One line of `scan --json`. (The agent's store encodes `to_json()` once, and uploads that text.)"""
        return _json_text(self.to_json())


# Bookkeeping keys that say nothing when absent (the contract keys are always present).
OMIT_WHEN_NONE = ("first_seen", "last_seen", "create_time", "detail", "source", "hostname", "host_id", "os")


class AgentEvent(_Event):
    """Something the agent itself reports: circuit_open, policy_unsafe, events_dropped, ..."""

    kind: Literal["agent"] = "agent"
    event_id: EventId
    detected_at: Timestamp
    type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    detail: dict[str, Any] = Field(default_factory=dict)
    count: Annotated[int, Field(ge=0, le=INT_MAX)] | None = None

    def _untyped(self) -> dict[str, Any]:
        return {**(self.model_extra or {}), "detail": self.detail}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json_text(self) -> str:
        return _json_text(self.to_json())


Event = Annotated[Violation | AgentEvent, Field(discriminator="kind")]


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event]


class EventsAck(BaseModel):
    acked: list[str]


def _json_text(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def batch_body(event_texts: list[str] | tuple[str, ...]) -> bytes:
    """The `POST /events` body around events already encoded (each one JSON object's text)."""
    return ('{"events":[' + ",".join(event_texts) + "]}").encode("utf-8")


def add_keys(event_text: str, values: dict[str, Any]) -> str:
    """A stored event's JSON text with more keys (`last_seen` at upload), without decoding it."""
    if not values:
        return event_text
    body = event_text.rstrip()
    if not body.endswith("}"):
        raise ValueError("not a JSON object")
    extra = json.dumps(values, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return f"{body[:-1]},{extra[1:]}" if body != "{}" else extra


VIOLATION_KEYS = frozenset(
    name for name in Violation.model_fields if name not in (*OMIT_WHEN_NONE, "kind", "connection")
)
"""The keys every finding / violation JSON object has (`connection` too for network rules)."""

WIRE_KEYS = VIOLATION_KEYS | {"hostname", "host_id", "os"}
"""The keys every violation has on the wire and on the server."""


__all__ = [
    "MAX_EVIDENCE",
    "OMIT_WHEN_NONE",
    "SHORT_MAX",
    "TEXT_CHECKED",
    "TEXT_MAX",
    "VIOLATION_KEYS",
    "WIRE_KEYS",
    "AgentEvent",
    "ConnectionRecord",
    "Event",
    "EventBatch",
    "EventsAck",
    "EvidenceRecord",
    "Violation",
    "add_keys",
    "batch_body",
]
