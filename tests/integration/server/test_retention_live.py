"""Retention against the real server (uvicorn), on SQLite and PostgreSQL: `serve --retention-days`
purges at start, and uploads are answered and stored while a purge runs batch by batch."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from server_stub.retention import RetentionService
from server_stub.store import Store, sqlite_url
from server_stub.store.engine import create_db_engine
from server_stub.store.retention import RetentionRepo
from server_stub.store.tables import events
from tests.support.server import LiveServer, fresh_pg_database, pg_url_or_skip, run_server
from tests.support.server_events import post, violation

OLD_DAYS = 45


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        data = tmp_path / "s" / "data"
        data.mkdir(parents=True)
        yield sqlite_url(data)
        return
    with fresh_pg_database(pg_url_or_skip()) as url:
        yield url


@contextmanager
def server_on(db: str, tmp_path: Path, *extra: str) -> Iterator[LiveServer]:
    # SQLite: the server's own file under its data dir; PostgreSQL: --db.
    with run_server(tmp_path / "s", db_url=None if db.startswith("sqlite") else db, extra_args=extra) as s:
        yield s


def _fill_old(db: str, host_id: str, n: int) -> None:
    """`n` violations detected OLD_DAYS ago, stored straight into the server's database."""
    old = datetime.now(UTC) - timedelta(days=OLD_DAYS)
    rows = [
        {
            "host_id": host_id,
            "event_id": str(uuid.uuid4()),
            "kind": "violation",
            "received_at": old,
            "detected_at": old,
            "rule_id": "old-rule",
            "data": {"rule_id": "old-rule"},
        }
        for _ in range(n)
    ]
    engine = create_db_engine(db)
    try:
        with engine.begin() as conn:
            conn.execute(events.insert(), rows)
    finally:
        engine.dispose()


def _counts(engine: sa.Engine) -> tuple[int, int]:
    """(old rule's violations, the rest)."""
    with engine.connect() as conn:
        old = conn.execute(sa.select(sa.func.count()).where(events.c.rule_id == "old-rule")).scalar_one()
        rest = conn.execute(sa.select(sa.func.count()).where(events.c.rule_id != "old-rule")).scalar_one()
    return int(old), int(rest)


def test_uploads_are_stored_while_a_purge_runs(db: str, tmp_path: Path) -> None:
    n = 20_000
    with server_on(db, tmp_path) as server:
        host = server.enroll("ws-busy")
        _fill_old(db, host.host_id, n)
        engine = create_db_engine(db)
        service = RetentionService(
            RetentionRepo(engine), days=30, export_floor=lambda: None, clock=lambda: datetime.now(UTC)
        )
        purged: list[int] = []
        purge = threading.Thread(target=lambda: purged.append(service.run_once()))
        try:
            purge.start()
            seen_mid_purge = []
            uploaded = 0
            while purge.is_alive() or uploaded == 0:
                batch = [violation() for _ in range(20)]
                answer = post(server, host, batch)
                assert answer.status_code == 200, answer.text
                assert set(answer.json()["acked"]) == {ev["event_id"] for ev in batch}
                uploaded += len(batch)
                old, _ = _counts(engine)
                if 0 < old < n:
                    seen_mid_purge.append(old)
            purge.join()
            assert purged == [n]
            assert _counts(engine) == (0, uploaded)  # the old ones gone, every upload stored
            # An upload was answered and stored between two batches of the purge, not after it.
            assert seen_mid_purge, "no upload completed while the purge was under way"
        finally:
            service.stop()
            purge.join()
            engine.dispose()


def test_serve_retention_days_purges_at_start(db: str, tmp_path: Path) -> None:
    store = Store.open(db)  # the schema, and one host to hang the old events on
    try:
        host_id = store.hosts.enroll(
            machine_id="m-old", hostname="ws-old", node_key_hash="k" * 64, now=datetime.now(UTC)
        )
    finally:
        store.close()
    _fill_old(db, host_id, 2_500)
    with server_on(db, tmp_path, "--retention-days", "30") as server:
        host = server.enroll("ws-new")
        assert post(server, host, [violation() for _ in range(3)]).status_code == 200
        engine = create_db_engine(db)
        try:
            deadline = datetime.now(UTC) + timedelta(seconds=60)
            while _counts(engine)[0] and datetime.now(UTC) < deadline:
                threading.Event().wait(0.2)
            assert _counts(engine) == (0, 3)
        finally:
            engine.dispose()
