"""Property: whatever JSON an enrolled node sends, the event model either refuses it with a
ValidationError or accepts something every store and listing can hold (endpoint_contract/bounds.py).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from endpoint_contract.bounds import INT_MAX, INT_MIN, MAX_DEPTH, TIME_MAX, TIME_MIN, json_problem
from endpoint_contract.events import AgentEvent, Violation

# Any text, including lone surrogates and NUL (what a JSON \u escape can carry).
texts = st.text(st.characters(codec=None, categories=None), max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=12,
)
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
times = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz).isoformat(),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offsets,
)


def base_violation() -> dict[str, Any]:
    return {
        "kind": "violation",
        "event_id": str(uuid.uuid4()),
        "detected_at": "2026-01-02T03:04:05Z",
        "rule_id": "r1",
        "category": "p2p",
        "action": "killed",
        "pid": 1,
        "process_name": "x",
        "reason": "y",
        "policy_version": 1,
    }


def assert_storable(event: Violation | AgentEvent) -> None:
    data = event.to_json()
    assert json_problem(data) is None
    json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")  # what the stores do
    assert TIME_MIN <= event.detected_at.astimezone(UTC) < TIME_MAX


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(texts, json_values, max_size=3),
    detected_at=times,
    policy_version=st.integers(min_value=-1, max_value=2**65),
    reason=texts,
)
def test_violation_is_refused_or_storable(
    extra: dict[str, Any], detected_at: str, policy_version: int, reason: str
) -> None:
    body = {**extra, **base_violation(), "detected_at": detected_at, "policy_version": policy_version}
    body["reason"] = reason
    try:
        event = Violation.model_validate(body)
    except ValidationError:
        return
    assert 0 <= event.policy_version <= INT_MAX
    assert_storable(event)


@settings(max_examples=200, deadline=None)
@given(
    detail=st.dictionaries(texts, json_values, max_size=4), count=st.integers(min_value=-1, max_value=2**66)
)
def test_agent_event_is_refused_or_storable(detail: dict[str, Any], count: int) -> None:
    body = {"kind": "agent", "event_id": str(uuid.uuid4()), "detected_at": "2026-01-02T03:04:05+02:00"}
    try:
        event = AgentEvent.model_validate({**body, "type": "t", "detail": detail, "count": count})
    except ValidationError:
        return
    assert event.count is not None and INT_MIN <= event.count <= INT_MAX
    assert_storable(event)


@settings(max_examples=50, deadline=None)
@given(depth=st.integers(min_value=MAX_DEPTH, max_value=3000))
def test_any_depth_is_refused_without_recursion(depth: int) -> None:
    nested: dict[str, Any] = {}
    node = nested
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    problem = json_problem({"extra": nested})
    assert problem is not None and problem.startswith("extra.a")
