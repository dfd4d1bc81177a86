"""Service plumbing: the instance lock, status.json, job wrapping, logging, policy source."""

from __future__ import annotations

import json
import logging
import stat
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from endpoint_agent.daemon import AlreadyRunning, InstanceLock, JsonLineFormatter, run_jobs
from endpoint_agent.errors import SettingsError
from endpoint_agent.report.store import NewEvent, ViolationStore
from endpoint_agent.service import JobSpec, build_policy_source, guarded, open_store, write_status
from endpoint_agent.settings import AgentSettings


def test_one_instance_per_state_dir(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path / "agent.lock")
    first.acquire()
    second = InstanceLock(tmp_path / "agent.lock")
    with pytest.raises(AlreadyRunning, match=r"another agent is already running \(pid \d+\)"):
        second.acquire()
    first.release()
    second.acquire()  # released with its descriptor
    second.release()


def test_status_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, {"state": "running", "scans": 1})
    write_status(path, {"state": "running", "scans": 2})
    assert json.loads(path.read_text()) == {"state": "running", "scans": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp files left behind


def test_a_failing_job_is_logged_with_its_traceback_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("bad scan")

    with caplog.at_level(logging.ERROR):
        guarded("scan", boom)()
    [record] = caplog.records
    assert record.getMessage() == "job scan failed; the next run goes ahead"
    assert record.exc_info is not None and "bad scan" in str(record.exc_info[1])


class CountingJob:
    """The scheduler test's job: the first run fails, later ones succeed."""

    def __init__(self) -> None:
        self.calls = 0
        self.done = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        if self.calls >= 3:
            self.done.set()
        if self.calls == 1:
            raise RuntimeError("first scan fails")


def test_the_scheduler_keeps_running_after_a_failed_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = CountingJob()
    stop = threading.Event()
    flushed: list[bool] = []
    states: list[str] = []
    jobs = [JobSpec("scan", job, 0.05, at_shutdown=lambda: flushed.append(True))]
    runner = threading.Thread(target=run_jobs, args=(stop, jobs), kwargs={"on_state": states.append})
    with caplog.at_level(logging.ERROR):
        runner.start()
        assert job.done.wait(20)
        stop.set()
        runner.join(20)
    assert not runner.is_alive()
    assert job.calls >= 3
    assert flushed == [True]
    assert any("job scan failed" in r.getMessage() for r in caplog.records)
    assert states == ["running", "stopped"]


def test_a_job_that_does_not_run_at_start_runs_after_one_interval() -> None:
    """Not paused: APScheduler 3 treats a job added without a first run time as paused forever."""
    ran = threading.Event()
    stop = threading.Event()
    jobs = [JobSpec("later", ran.set, 0.05, run_at_start=False)]
    runner = threading.Thread(target=run_jobs, args=(stop, jobs), kwargs={"on_state": lambda _: None})
    runner.start()
    try:
        assert ran.wait(20), "the job never ran"
    finally:
        stop.set()
        runner.join(20)


def test_json_log_lines() -> None:
    record = logging.LogRecord("endpoint_agent.x", logging.ERROR, __file__, 1, "scan %d failed", (3,), None)
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = json.loads(JsonLineFormatter().format(record))
    assert (
        line["level"] == "ERROR"
        and line["message"] == "scan 3 failed"
        and line["logger"] == "endpoint_agent.x"
    )
    assert "ValueError: bad" in line["exception"]
    assert line["time"].endswith("Z")


def test_policy_source_is_required_and_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no policy source"):
        build_policy_source(AgentSettings(state_dir=tmp_path))
    with pytest.raises(SettingsError, match=r"invalid setting policy: .*not found"):
        build_policy_source(AgentSettings(state_dir=tmp_path, policy=tmp_path / "missing.yaml"))


def test_a_damaged_store_is_kept_aside_and_replaced(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    settings.store_path.write_bytes(b"garbage, not SQLite" * 200)
    store = open_store(settings)
    store.close()
    [aside] = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside.read_bytes().startswith(b"garbage")
    assert ViolationStore.open_existing(settings.store_path) is not None


def test_a_damaged_store_is_reported_with_what_could_and_could_not_be_recovered(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(400)]
    with ViolationStore.open(settings.store_path) as store:
        store.commit_tick([NewEvent(i, "violation", now, {"event_id": i, "pad": "x" * 900}) for i in ids])
        store.ack(ids[:50])  # on the server already: not re-queued
    raw = bytearray(settings.store_path.read_bytes())
    page = 4096
    row = raw.index(f'{{"event_id": "{ids[200]}", "pad"'.encode())  # in a table page, not an index
    middle = row // page * page
    raw[middle + 8 : middle + page] = b"\xa5" * (page - 8)  # one leaf page of events destroyed
    settings.store_path.write_bytes(bytes(raw))

    store = open_store(settings)
    try:
        events = store.events()
    finally:
        store.close()
    [damage] = [e.payload for e in events if e.kind == "agent"]
    detail = damage["type"], damage["detail"]
    assert detail[0] == "store_damaged"
    recovered = [e.event_id for e in events if e.kind == "violation"]
    assert set(recovered) <= set(ids[50:]) and 0 < len(recovered) < 350
    assert detail[1]["recovered_pending_events"] == len(recovered)
    assert detail[1]["unreadable_events"] and ".corrupt-" in detail[1]["moved_to"]
    assert any("dedup" in line for line in detail[1]["lost"])


def test_an_unreadable_store_is_reported_as_everything_pending_lost(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    settings.store_path.write_bytes(b"garbage, not SQLite" * 200)
    store = open_store(settings)
    try:
        [event] = store.events(kind="agent")
    finally:
        store.close()
    assert event.payload["type"] == "store_damaged"
    assert event.payload["detail"]["unreadable_events"] is None
    assert "every event not yet uploaded" in event.payload["detail"]["lost"][0]
