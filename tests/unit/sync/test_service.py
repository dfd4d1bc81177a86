"""build(): settings validated with one-line errors; the poll thread starts and stops."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.errors import SettingsError
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.settings import AgentSettings
from endpoint_agent.sync.identity import Enrollment, EnrollmentFile
from endpoint_agent.sync.service import PolicySyncService, build_policy_sync
from endpoint_agent.types import Snapshot
from endpoint_contract.envelope import public_key_pem
from tests.unit.sync.conftest import Signer


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ViolationStore]:
    with ViolationStore.open(tmp_path / "store.sqlite3") as opened:
        yield opened


def settings(tmp_path: Path, **overrides: object) -> AgentSettings:
    key = tmp_path / "policy-signing.pub"
    if not key.exists():
        key.write_bytes(public_key_pem(Signer().public))
    values: dict[str, object] = {
        "server": f"http://127.0.0.1:{closed_port()}",
        "enroll_secret": "enroll-secret-0123456789",
        "public_keys": [str(key)],
        "state_dir": str(tmp_path / "state"),
        "sync_interval": 60,
        **overrides,
    }
    return AgentSettings.model_validate(values)


def empty_snapshot() -> Snapshot:
    return Snapshot(taken_at=datetime(2030, 1, 1, tzinfo=UTC), processes={})


def build(values: AgentSettings, **kwargs: Any) -> PolicySyncService:
    """build_policy_sync with a dry run on an empty machine."""
    return build_policy_sync(values, snapshot=empty_snapshot, guard=Guard(), **kwargs)


def test_server_mode_needs_a_trusted_key(tmp_path: Path, store: ViolationStore) -> None:
    with pytest.raises(SettingsError, match=r"^invalid setting public_keys: server mode needs at least one"):
        build(settings(tmp_path, public_keys=[]), store=store)
    missing = tmp_path / "nope.pub"
    with pytest.raises(
        SettingsError, match=rf"^invalid setting public_keys: {missing}: public key file not found"
    ):
        build(settings(tmp_path, public_keys=[str(missing)]), store=store)


def test_the_enroll_secret_is_needed_only_until_enrolled(tmp_path: Path, store: ViolationStore) -> None:
    with pytest.raises(SettingsError, match=r"^invalid setting enroll_secret: needed to enroll"):
        build(settings(tmp_path, enroll_secret=None), store=store)
    EnrollmentFile(tmp_path / "state").save(Enrollment("host-1", "node-key"))
    sync = build(settings(tmp_path, enroll_secret=None), store=store)
    assert sync.status()["host_id"] == "host-1"
    sync.stop()


def test_the_poll_thread_runs_backs_off_and_stops(tmp_path: Path, store: ViolationStore) -> None:
    sync = build(settings(tmp_path), store=store, rng=random.Random(3), system_machine_id=None)
    assert sync.current() is None
    sync.ensure_running()
    sync.ensure_running()  # idempotent: one thread
    assert [t.name for t in threading.enumerate()].count("policy-sync") == 1
    for _ in range(500):  # the first poll happens at once and fails: nobody listens on that port
        if sync.status()["failed"]:
            break
        time.sleep(0.02)
    status = sync.status()
    assert status["failed"] == 1 and status["consecutive_failures"] == 1
    assert "ConnectError" in str(status["last_error"])
    sync.stop(timeout=10)
    assert "policy-sync" not in [t.name for t in threading.enumerate()]
    sync.ensure_running()  # never restarted once stopped
    assert "policy-sync" not in [t.name for t in threading.enumerate()]
