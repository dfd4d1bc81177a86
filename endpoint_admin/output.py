"""Render listings as a table (humans), CSV (spreadsheets) or NDJSON (scripts), row by row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

FORMATS = ("table", "csv", "ndjson")

VIOLATION_COLUMNS = [
    "detected_at", "received_at", "hostname", "host", "host_id", "os", "rule_id", "category", "severity",
    "action", "pid", "process_name", "exe", "sha256", "cmdline", "ppid", "parent_name", "username",
    "policy_version", "laddr", "raddr", "proto", "status", "domain", "evidence", "reason", "event_id",
]  # fmt: skip

# Table: fixed widths so the output can stream page by page; the last column takes the rest.
_VIOLATION_TABLE = [
    ("DETECTED", "detected_at", 20),
    ("HOST", "hostname", 18),
    ("RULE", "rule_id", 22),
    ("ACTION", "action", 11),
    ("PID", "pid", 7),
    ("PROCESS", "process_name", 18),
    ("USER", "username", 12),
    ("SEVERITY", "severity", 8),
    ("REASON", "reason", 0),
]

POLICY_COLUMNS = [
    "version", "policy_name", "fleet_id", "rollout_percent", "key_id", "published_at", "rolled_back_at",
    "etag",
]  # fmt: skip

HOST_COLUMNS = ["hostname", "host_id", "last_seen", "stale", "agent_version", "policy_version", "mode"]


def violation_row(item: dict[str, Any]) -> dict[str, Any]:
    conn = item.get("connection") or {}
    row = {col: item.get(col) for col in VIOLATION_COLUMNS}
    for key in ("laddr", "raddr", "proto", "status", "domain"):
        row[key] = conn.get(key) if isinstance(conn, dict) else None
    return row  # evidence (a list) becomes one cell of JSON


def write_violations(items: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> int:
    count = 0
    if fmt == "ndjson":
        for item in items:
            out.write(json.dumps(item, sort_keys=True) + "\n")
            count += 1
    elif fmt == "csv":
        # Every page first: a failure half way must not leave a header and half a file behind.
        items = list(items)
        writer = csv.DictWriter(out, fieldnames=VIOLATION_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for item in items:
            writer.writerow({k: _csv_cell(v) for k, v in violation_row(item).items()})
            count += 1
    else:
        out.write(_fixed_row([h for h, _, _ in _VIOLATION_TABLE], [w for _, _, w in _VIOLATION_TABLE]))
        for item in items:
            cells = [_cell(item.get(key)) for _, key, _ in _VIOLATION_TABLE]
            out.write(_fixed_row(cells, [w for _, _, w in _VIOLATION_TABLE]))
            count += 1
        if count == 0:
            out.write("(no violations)\n")
    return count


def write_hosts(items: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    if fmt == "ndjson":
        for item in items:
            out.write(json.dumps(item, sort_keys=True) + "\n")
        return
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=HOST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for item in items:
            writer.writerow({k: _csv_cell(item.get(k)) for k in HOST_COLUMNS})
        return
    rows = [
        [
            _cell(h.get("hostname")),
            _cell(h.get("host_id")),
            _cell(h.get("last_seen")),
            "STALE" if h.get("stale") else "ok",
            _cell(h.get("agent_version")),
            _cell(h.get("policy_version")),
            _cell(h.get("mode")),
        ]
        for h in items
    ]
    write_table(["HOSTNAME", "HOST_ID", "LAST_SEEN", "STATE", "AGENT", "POLICY", "MODE"], rows, out)


def write_policies(items: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    if fmt == "ndjson":
        for item in items:
            out.write(json.dumps(item, sort_keys=True) + "\n")
        return
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=POLICY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for item in items:
            writer.writerow({k: _csv_cell(item.get(k)) for k in POLICY_COLUMNS})
        return
    if not items:
        out.write("(no policy published)\n")
        return
    rows = [
        [
            _cell(p.get("version")),
            _cell(p.get("policy_name")),
            _cell(p.get("fleet_id")),
            f"{_cell(p.get('rollout_percent'))}%",
            _cell(p.get("published_at")),
            "rolled back " + _cell(p.get("rolled_back_at")) if p.get("rolled_back_at") else "",
            _cell(p.get("key_id")),
        ]
        for p in items
    ]
    write_table(["VERSION", "POLICY", "FLEET", "ROLLOUT", "PUBLISHED", "STATE", "KEY"], rows, out)


def write_table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    widths[-1] = 0
    out.write(_fixed_row(headers, widths))
    for row in rows:
        out.write(_fixed_row(row, widths))


def _fixed_row(cells: list[str], widths: list[int]) -> str:
    parts = []
    for cell, width in zip(cells, widths, strict=True):
        if width and len(cell) > width:
            cell = cell[: width - 1] + "…"
        parts.append(cell.ljust(width) if width else cell)
    return "  ".join(parts).rstrip() + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    # One line per row, whatever a process name or reason contains; and no terminal escape
    # sequences: whoever names a process on an endpoint must not write to the admin's terminal.
    text = str(value).replace("\r", " ").replace("\n", " ").replace("\t", " ")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else "?" for c in text)


def _csv_cell(value: Any) -> str:
    # Process names and command lines are chosen by whoever runs the process: keep a spreadsheet
    # from reading one as a formula (CSV injection).
    if isinstance(value, bool):
        return "true" if value else "false"
    text = _cell(value)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t"):
        return "'" + text
    return text
