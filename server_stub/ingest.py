"""What `POST /events` needs besides the store: its body's documented schema and the audit lines.

The route reads the body itself (server_stub/batch.py decodes it once), so FastAPI does not
see a body parameter; the schema is documented here, inline, as EventBatch's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from endpoint_agent.logfmt import log_fields
from endpoint_contract.events import EventBatch, Violation
from server_stub.batch import Received
from server_stub.store.events import VIOLATION, EventInsert

MAX_SHOWN = 8


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every `$ref` replaced by its definition (no components needed)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            # The discriminator's mapping names $defs; each member's `kind` const says the same.
            return {k: resolve(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


BATCH_SCHEMA = inline_schema(EventBatch)


def audit_stored(
    log: logging.Logger, host_id: str, received: Sequence[Received], stored: Sequence[EventInsert]
) -> None:
    """The audit trail of newly stored violations, cheap at fleet rates: one INFO line per batch
    (how many, by rule and by action, which pids), whose JSON fields carry host_id and, when the
    batch's new violations share one, rule_id, pid, action and event_id; every violation on its own
    line only at DEBUG. Ids stored before (a retried upload) are not logged again."""
    if not log.isEnabledFor(logging.INFO):  # `serve --log-level warning`: nothing to build
        return
    new = {ev.event_id for ev in stored if ev.kind == VIOLATION}
    if not new:
        return
    found: list[Violation] = []
    for r in received:
        ev = r.event
        if isinstance(ev, Violation) and ev.event_id in new:
            new.discard(ev.event_id)  # a duplicate inside the batch was stored once
            found.append(ev)
    rules = _counts(v.rule_id for v in found)
    actions = _counts(v.action.value for v in found)
    pids = list(dict.fromkeys(v.pid for v in found))
    log.info(
        "stored %d violation%s from host %s: %s (%s), pid %s",
        len(found),
        "" if len(found) == 1 else "s",
        host_id,
        _shown(f"rule {r} x{n}" if n > 1 else f"rule {r}" for r, n in rules.items()),
        ", ".join(f"{a} {n}" for a, n in actions.items()),
        _shown(str(p) for p in pids),
        extra=log_fields(
            host_id=host_id,
            rule_id=next(iter(rules)) if len(rules) == 1 else None,
            pid=pids[0] if len(pids) == 1 else None,
            action=next(iter(actions)) if len(actions) == 1 else None,
            event_id=found[0].event_id if len(found) == 1 else None,
        ),
    )
    if log.isEnabledFor(logging.DEBUG):
        for v in found:
            log.debug(
                "violation %s from host %s: rule %s, pid %d, %s",
                v.event_id,
                host_id,
                v.rule_id,
                v.pid,
                v.action.value,
                extra=log_fields(host_id=host_id, rule_id=v.rule_id, pid=v.pid, event_id=v.event_id),
            )


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _shown(items: Iterable[str]) -> str:
    """At most MAX_SHOWN items, then how many more: one line stays short whatever the batch."""
    listed = list(items)
    more = len(listed) - MAX_SHOWN
    return ", ".join(listed[:MAX_SHOWN]) + (f" and {more} more" if more > 0 else "")
