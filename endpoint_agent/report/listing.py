"""`endpoint-agent violations [--json]`: the violations recorded in the local store.

JSON: one object per line (NDJSON) with the contract keys (endpoint_contract/events.py,
`VIOLATION_KEYS`: the forensic fields included, and connection for network rules), hostname and
os, plus first_seen, last_seen (while the process kept violating) and uploaded.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from endpoint_agent.display import printable
from endpoint_agent.report.store import StoredEvent, ViolationStore
from endpoint_agent.settings import AgentSettings


def violation_records(events: Sequence[StoredEvent]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        record = dict(e.payload)
        record.setdefault("event_id", e.event_id)
        record["last_seen"] = e.last_seen or record.get("first_seen") or record.get("detected_at")
        record["uploaded"] = e.uploaded_at is not None
        out.append(record)
    return out


def show_violations(settings: AgentSettings, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    store = ViolationStore.open_existing(settings.store_path)
    if store is None:
        if not as_json:
            print(f"No violations recorded (no store at {settings.store_path}).", file=out)
        return 0
    with store:
        records = violation_records(store.events(kind="violation"))
    if as_json:
        for r in records:
            out.write(json.dumps(r, sort_keys=True, default=str) + "\n")
        return 0
    _table(records, out)
    return 0


def _table(records: Sequence[dict[str, Any]], out: TextIO) -> None:
    if not records:
        print("No violations recorded.", file=out)
        return
    width = shutil.get_terminal_size((160, 20)).columns
    tty = out.isatty()
    print(
        f"{'DETECTED':<20} {'ACTION':<12} {'RULE':<24} {'PID':>7} {'PROCESS':<18} {'USER':<10} REASON",
        file=out,
    )
    for r in records:
        # Every cell through printable(): names and reasons quote what a user chose (ESC, newlines).
        cell = {
            k: printable(r.get(k) or "")
            for k in ("detected_at", "action", "rule_id", "process_name", "reason")
        }
        detected = cell["detected_at"][:19].replace("T", " ")
        line = (
            f"{detected:<20} {cell['action'] or '?':<12} {cell['rule_id'][:24]:<24} "
            f"{printable(r.get('pid', 0)):>7} {cell['process_name'][:18]:<18} "
            f"{printable(r.get('username') or '?')[:10]:<10} {cell['reason']}"
        )
        print(line[:width] if tty else line, file=out)
    print(f"{len(records)} violation(s).", file=out)


__all__ = ["show_violations", "violation_records"]
