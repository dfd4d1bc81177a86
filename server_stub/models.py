"""Request and response bodies of the HTTP API (pydantic): validated field by field."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from endpoint_agent.types import Outcome

Short = Annotated[str, StringConstraints(max_length=256)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Long = Annotated[str, StringConstraints(max_length=8192)]
Percent = Annotated[int, Field(ge=0, le=100)]
# Canonical text of a UUID (what str(uuid.uuid4()) gives): acknowledged back exactly as sent.
EventId = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
Counter = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _reject_non_finite(value: Any) -> Any:
    """JSON from Python may carry NaN/Infinity, which neither PostgreSQL nor strict JSON readers take."""
    stack = [value]
    while stack:  # iterative: the document may be nested as deep as the parser allowed
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("NaN and Infinity are not valid JSON numbers")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


class _Event(BaseModel):
    """Common to every event; unknown extra keys are stored as sent."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        return _reject_non_finite(data)


# --- agent -> server --------------------------------------------------------------------------


class EnrollRequest(_Strict):
    hostname: Name
    machine_id: Name


class EnrollResponse(BaseModel):
    host_id: str
    node_key: str


class ConnectionIn(BaseModel):
    """The connection a network rule matched; further keys (direction, netns...) are kept."""

    model_config = ConfigDict(extra="allow")

    laddr: Short | None = None
    raddr: Short | None = None
    proto: Short | None = None
    status: Short | None = None


class ViolationEvent(_Event):
    """One violation, with the keys of the DESIGN contract."""

    kind: Literal["violation"]
    event_id: EventId
    detected_at: AwareDatetime
    rule_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    category: Annotated[str, StringConstraints(max_length=200)]
    action: Outcome
    pid: Annotated[int, Field(ge=0)]
    process_name: Long
    exe: Long | None = None
    username: Short | None = None
    reason: Long
    policy_version: Annotated[int, Field(ge=0)]
    connection: ConnectionIn | None = None
    first_seen: AwareDatetime | None = None
    last_seen: AwareDatetime | None = None


class AgentEvent(_Event):
    """Something the agent itself reports: circuit_open, policy_unsafe, events_dropped, ..."""

    kind: Literal["agent"]
    event_id: EventId
    detected_at: AwareDatetime
    type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    detail: dict[str, Any] = Field(default_factory=dict)
    count: Annotated[int, Field(ge=0)] | None = None


Event = Annotated[ViolationEvent | AgentEvent, Field(discriminator="kind")]


class EventBatch(_Strict):
    events: list[Event]


class EventsAck(BaseModel):
    acked: list[str]


class HeartbeatRequest(BaseModel):
    # Unknown keys are ignored so that a newer agent can talk to an older server.
    model_config = ConfigDict(extra="ignore")

    agent_version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    policy_version: Annotated[int, Field(ge=0)] | None = None
    mode: Annotated[str, StringConstraints(max_length=32)] | None = None
    last_scan_at: AwareDatetime | None = None
    counters: Annotated[dict[Counter, Annotated[int, Field(ge=0)]], Field(max_length=64)] = Field(
        default_factory=dict
    )
    circuit_state: Annotated[str, StringConstraints(max_length=32)] | None = None
    mode_reason: Annotated[str, StringConstraints(max_length=200)] | None = None


class Ok(BaseModel):
    status: str = "ok"


# --- admin -> server --------------------------------------------------------------------------


class PublishRequest(_Strict):
    envelope: dict[str, Any] | str = Field(
        description="the signed envelope, as a JSON object or its JSON text"
    )
    rollout_percent: Percent = 100


class RolloutRequest(_Strict):
    percent: Percent


class PolicyState(BaseModel):
    version: int
    rollout_percent: int
    policy_name: str
    fleet_id: str
    key_id: str
    etag: str
    published_at: datetime
    rolled_back_at: datetime | None = None


class PublishResponse(PolicyState):
    previous_version: int | None


class RollbackResponse(PolicyState):
    rolled_back_version: int


class PolicyVersions(BaseModel):
    items: list[PolicyState]


# --- reports ----------------------------------------------------------------------------------


class EventPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


class HostOut(BaseModel):
    host_id: str
    hostname: str
    machine_id: str
    enrolled_at: datetime
    last_seen: datetime | None
    stale: bool
    agent_version: str | None
    policy_version: int | None
    mode: str | None
    last_scan_at: datetime | None
    heartbeat_at: datetime | None
    counters: dict[str, int]
    circuit_state: str | None


class HostList(BaseModel):
    items: list[HostOut]


class CountOut(BaseModel):
    count: int
    rule_id: str | None = None
    category: str | None = None
    action: str | None = None
    host: str | None = None
    hostname: str | None = None
    triage: str | None = None


class SummaryOut(BaseModel):
    since: datetime | None
    until: datetime | None
    total: int
    open: int = Field(description="violations nobody has triaged yet")
    by_triage: list[CountOut]
    by_rule: list[CountOut]
    by_category: list[CountOut]
    by_action: list[CountOut]
    by_host: list[CountOut]


# --- triage and audit -------------------------------------------------------------------------

TriageState = Literal["acknowledged", "false_positive", "escalated", "open"]


class ViolationKey(_Strict):
    host: Annotated[str, StringConstraints(min_length=1, max_length=36)]
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=36)]


class TriageRequest(_Strict):
    items: Annotated[list[ViolationKey], Field(min_length=1, max_length=500)]
    state: TriageState = Field(description="'open' clears the triage")
    note: Annotated[str, StringConstraints(max_length=2000)] = ""


class TriageResponse(BaseModel):
    changed: int


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    detail: str


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None
