"""The audit trail of stored violations (server_stub/ingest.py): one INFO line per batch with the
fields a log pipeline filters on, each violation only at DEBUG, nothing for ids stored before."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import pytest

from endpoint_contract.events import Violation, batch_body
from server_stub.batch import Received, parse_batch
from server_stub.ingest import audit_stored
from server_stub.store.events import received_rows

LOG = logging.getLogger("test.ingest.audit")


def batch(*specs: tuple[str, int]) -> list[Received]:
    texts = [
        Violation.model_validate(
            {"event_id": str(uuid.uuid4()), "detected_at": datetime.now(UTC), "rule_id": rule,
             "category": "p2p", "action": "killed", "pid": pid, "process_name": "x", "reason": "y",
             "policy_version": 1}
        ).to_json_text()
        for rule, pid in specs
    ]  # fmt: skip
    return parse_batch(batch_body(texts))


def test_one_info_line_per_batch_with_fields_when_they_are_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    one = batch(("tls-standin", 42))
    audit_stored(LOG, "h-1", one, received_rows(one, "h-1", "ws"))
    many = batch(("r1", 1), ("r1", 2), ("r2", 2))
    audit_stored(LOG, "h-1", many, received_rows(many, "h-1", "ws"))
    first, second = caplog.records
    assert (first.field_host_id, first.field_rule_id, first.field_pid, first.field_action) == (  # type: ignore[attr-defined]
        "h-1", "tls-standin", 42, "killed",
    )  # fmt: skip
    assert first.field_event_id == one[0].event.event_id  # type: ignore[attr-defined]
    assert second.field_host_id == "h-1" and second.field_rule_id is None  # type: ignore[attr-defined]
    assert (
        second.getMessage() == "stored 3 violations from host h-1: rule r1 x2, rule r2 (killed 3), pid 1, 2"
    )


def test_nothing_new_logs_nothing_and_each_violation_only_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    events = batch(("r1", 1), ("r2", 2))
    audit_stored(LOG, "h-1", events, [])  # a retried batch: stored before
    assert caplog.records == []
    caplog.set_level(logging.DEBUG, LOG.name)
    audit_stored(LOG, "h-1", events, received_rows(events, "h-1", "ws"))
    levels = [r.levelname for r in caplog.records]
    assert levels == ["INFO", "DEBUG", "DEBUG"]
    assert [r.field_rule_id for r in caplog.records[1:]] == ["r1", "r2"]  # type: ignore[attr-defined]
