"""The local event log: what the store records, as OCSF JSON lines, private, rotated, never in the way."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from endpoint_agent.report.event_log import EventLog
from endpoint_agent.report.store import NewEvent, ViolationStore
from tests.support.violations import SHA, sample_violation

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "data/ocsf/detection_finding.schema.json").read_text()
)


def _recorded(store: ViolationStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        v = sample_violation("p2p-qbittorrent", datetime.now(UTC), pid=5000 + i)
        store.append([NewEvent(v.event_id, "violation", datetime.now(UTC), v.to_json())])
        ids.append(v.event_id)
    return ids


def test_each_recorded_violation_is_one_valid_ocsf_line(tmp_path: Path) -> None:
    path = tmp_path / "log" / "events.jsonl"
    log = EventLog(path, max_bytes=1 << 20, backups=2)
    with ViolationStore.open(tmp_path / "store.sqlite3") as store:
        store.on_commit(log.record)
        ids = _recorded(store, 3)
        agent_event = {"kind": "agent", "event_id": str(uuid.uuid4()), "type": "circuit_open"}
        store.append([NewEvent(str(agent_event["event_id"]), "agent", datetime.now(UTC), agent_event)])
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["finding_info"]["uid"] for line in lines] == ids  # violations only, in order
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    process = lines[0]["evidences"][0]["process"]
    assert process["name"] == "qbittorrent" and process["file"]["hashes"][0]["value"] == SHA
    assert process["parent_process"] == {"pid": 1000, "name": "bash"}
    assert lines[0]["device"]["os"]["type_id"] == 200  # Linux
    assert (path.stat().st_mode & 0o777) == 0o600


def test_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=8192, backups=3)
    with ViolationStore.open(tmp_path / "store.sqlite3") as store:
        store.on_commit(log.record)
        _recorded(store, 40)
    log.close()
    files = sorted(tmp_path.glob("events.jsonl*"))
    assert [f.name for f in files] == ["events.jsonl", "events.jsonl.1", "events.jsonl.2", "events.jsonl.3"]
    assert all(f.stat().st_size <= 8192 for f in files)


def test_a_log_that_cannot_be_written_never_stops_recording(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "events.jsonl"
    os.symlink(target, link)  # a planted symlink is not followed
    log = EventLog(link, max_bytes=1 << 20, backups=1)
    with ViolationStore.open(tmp_path / "store.sqlite3") as store:
        store.on_commit(log.record)
        ids = _recorded(store, 2)
        assert [e.event_id for e in store.events(kind="violation")] == ids  # recorded all the same
    assert log.failed == 2 and log.written == 0
    assert target.read_text() == ""
