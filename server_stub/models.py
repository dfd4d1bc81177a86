"""Request and response bodies of the HTTP API (pydantic): validated field by field.

What agents upload (events, heartbeats) is defined once, in endpoint_contract/, and validated
with the same models the agent writes with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from endpoint_contract.bounds import json_problem

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


class EnrollRequest(_Strict):
    hostname: Name
    machine_id: Name
    # A known machine id re-enrolls (rotates its key) only with its current node key.
    node_key: Short | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        problem = json_problem(data)  # no NUL or surrogate reaches a column
        if problem is not None:
            raise ValueError(problem)
        return data


class EnrollResponse(BaseModel):
    host_id: str
    node_key: str


class Ok(BaseModel):
    status: str = "ok"


class Health(Ok):
    # Per export sink: type, state (ok | retrying | standby | stopped), ok, lag, delivered, skipped,
    # consecutive_failures, last_success, last_error, last_error_at (server_stub/export/service.py).
    export: dict[str, dict[str, Any]] | None = None


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
    next_cursor: str | None = Field(default=None, description="pass back as `cursor` for the next page")


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


class EnrollTokenRequest(_Strict):
    expires_in: Annotated[int, Field(ge=60, le=365 * 86400, description="seconds until it expires")]
    uses: Annotated[int, Field(ge=1, le=100_000)]


class EnrollTokenOut(BaseModel):
    token: str
    expires_at: datetime
    uses: int


class HostResetOut(BaseModel):
    host_id: str
    hostname: str
