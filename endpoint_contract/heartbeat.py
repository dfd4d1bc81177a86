"""The heartbeat (`POST /api/v1/heartbeat`): what an agent is doing, sent every upload interval.

    beat = Heartbeat(agent_version="0.1.0", policy_version=3, mode="enforce", counters={"scans": 120})

The agent builds it (validated: a bad counter is its own bug, caught before sending); the server
validates the same model and keeps the latest per host (`GET /api/v1/hosts`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from endpoint_contract.bounds import INT_MAX, Timestamp, json_problem

MAX_COUNTERS = 64
MODE_REASON_MAX = 200
Counter = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Heartbeat(BaseModel):
    # Unknown keys are ignored so that a newer agent can talk to an older server.
    model_config = ConfigDict(extra="ignore", frozen=True)

    agent_version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    policy_version: Annotated[int, Field(ge=0, le=INT_MAX)] | None = None
    # The effective mode: "monitor" while break-glass or the circuit breaker says so.
    mode: Annotated[str, StringConstraints(max_length=32)] | None = None
    last_scan_at: Timestamp | None = None
    counters: Annotated[
        dict[Counter, Annotated[int, Field(ge=0, le=INT_MAX)]], Field(max_length=MAX_COUNTERS)
    ] = Field(default_factory=dict)
    circuit_state: Annotated[str, StringConstraints(max_length=32)] | None = None  # "open" | "closed"
    # Why this mode: "break-glass file present", "policy mode is monitor", ...
    mode_reason: Annotated[str, StringConstraints(max_length=MODE_REASON_MAX)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        problem = json_problem(data)  # no NUL or surrogate reaches a column (endpoint_contract/bounds.py)
        if problem is not None:
            raise ValueError(problem)
        return data

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


__all__ = ["MAX_COUNTERS", "MODE_REASON_MAX", "Heartbeat"]
