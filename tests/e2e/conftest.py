"""End-to-end fixtures: a restartable real server on SQLite or PostgreSQL, and a private PID namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e_harness import Agent, Server
from tests.support.enforce_procs import PidNamespace
from tests.support.server import fresh_pg_database, pg_url_or_skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: SQLite under the server's data dir; else a fresh PostgreSQL database (ENDPOINT_TEST_PG_URL)."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_pg_database(pg_url_or_skip()) as url:
        yield url


@pytest.fixture
def server(tmp_path: Path, db_url: str | None) -> Iterator[Server]:
    # A short --stale-after, so that a stopped agent turns stale within the test.
    s = Server(tmp_path / "server", db_url=db_url, stale_after=3.0)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def ns() -> Iterator[PidNamespace]:
    with PidNamespace() as namespace:
        yield namespace


@pytest.fixture
def agent(ns: PidNamespace, tmp_path: Path, server: Server) -> Agent:
    return Agent(ns, tmp_path / "agent", server)
