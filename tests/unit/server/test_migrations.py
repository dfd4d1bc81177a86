"""Schema migrations: applied once, concurrently safe, matching tables.py, refusing newer schemas."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from endpoint_agent.errors import SettingsError, StoreError
from server_stub.store import Store, normalize_url
from server_stub.store.engine import create_db_engine
from server_stub.store.migrations import MIGRATIONS, migrate
from server_stub.store.tables import metadata


def test_schema_after_migrations_matches_tables_py(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        assert migrate(engine) == MIGRATIONS[-1].version
        inspector = sa.inspect(engine)
        for table in metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
        with engine.connect() as conn:
            versions = (
                conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
            )
        assert versions == [m.version for m in MIGRATIONS]
    finally:
        engine.dispose()


def test_concurrent_starts_migrate_exactly_once(db_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            stores.append(Store.open(db_url))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with stores[0].engine.connect() as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM schema_version")).scalar_one()
        assert count == len(MIGRATIONS)
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused(db_url: str) -> None:
    Store.open(db_url).close()
    engine = create_db_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO schema_version (version, applied_at) VALUES (999, CURRENT_TIMESTAMP)")
            )
        with pytest.raises(StoreError, match="newer than this server"):
            migrate(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgres://u@h:5433/db", "postgresql+psycopg://u@h:5433/db"),
        ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://u:secret@h/db", "not a url", "postgresql+psycopg2://u:p@h/db"])
def test_unsupported_database_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        normalize_url(url)
    assert "secret" not in str(info.value)


def test_unreachable_database_is_a_store_error(tmp_path) -> None:
    with pytest.raises(StoreError, match="database error"):
        Store.open(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")
