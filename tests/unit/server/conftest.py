"""Store fixtures: each test gets an empty database, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server_stub.store import Store
from tests.support.server import database_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[Store]:
    """An empty PostgreSQL store only (a test of what SQLite does not have)."""
    with database_url("postgres", tmp_path) as url:
        s = Store.open(url)
        try:
            yield s
        finally:
            s.close()
