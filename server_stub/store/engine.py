"""Database engines (SQLite WAL or PostgreSQL via psycopg 3), URL handling and error translation."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from endpoint_agent.errors import SettingsError, StoreError

SQLITE_FILE = "endpoint-server.db"
SQLITE_BUSY_TIMEOUT_MS = 15_000
_READONLY = "endpoint_readonly"


def normalize_url(url: str) -> str:
    """postgres:// and postgresql:// mean psycopg 3 here; sqlite URLs pass; anything else is refused."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SettingsError(f"--db: not a database URL: {_redact(url)!r}")
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return url
    raise SettingsError(f"--db: unsupported database {scheme!r} (use postgresql://... or sqlite:///...)")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / SQLITE_FILE}"


# Connections beyond the worker threads: the cache watcher, the write-behind flush, the exporter,
# the rate-limit exchange, retention, and one spare.
BACKGROUND_CONNECTIONS = 6
DEFAULT_POOL_SIZE = 16 + BACKGROUND_CONNECTIONS  # the server's default worker threads, plus those
POOL_OVERFLOW = 4  # a little slack; never hundreds of short-lived connections under load


def create_db_engine(url: str, pool_size: int | None = None) -> Engine:
    """An engine whose pool holds `pool_size` connections (+ POOL_OVERFLOW, closed when idle).

    Size it to the threads that use it (server_stub/app.py: worker threads + background ones): a
    pool smaller than that makes threads open and close a connection per request under load.
    """
    url = normalize_url(url)
    size = pool_size if pool_size is not None else DEFAULT_POOL_SIZE
    try:
        if url.startswith("sqlite") and _in_memory(url):
            engine = sa.create_engine(url)  # one connection, by nature: no pool to size
            _configure_sqlite(engine)
        elif url.startswith("sqlite"):
            engine = sa.create_engine(
                url,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                pool_size=size,
                max_overflow=POOL_OVERFLOW,
            )
            _configure_sqlite(engine)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=size, max_overflow=POOL_OVERFLOW)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise SettingsError(f"--db: cannot use {_redact(url)!r}: {exc}") from exc
    return engine


def _in_memory(url: str) -> bool:
    database = sa.engine.make_url(url).database
    return not database or database == ":memory:" or "mode=memory" in url


def _enable_wal(cur: Any) -> None:
    """WAL is persistent once set; setting it is the one step SQLite's busy timeout does not cover
    (the switch needs the database to itself), so servers starting together retry it briefly."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks transactional DDL; take over
    # (the documented SQLAlchemy recipe) and begin IMMEDIATE so a transaction that will write
    # holds the write lock from the start instead of failing to upgrade a read lock later.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get(_READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for queries only (on SQLite it does not take the write lock)."""
    with engine.connect() as conn:
        conn.execution_options(**{_READONLY: True})
        yield conn


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def serialize_writers(conn: Connection, name: str) -> None:
    """Make concurrent transactions that touch `name` run one after the other.

    PostgreSQL: a transaction-scoped advisory lock (released at commit/rollback), so several
    server processes can share one database. SQLite: BEGIN IMMEDIATE already serializes writers.
    """
    if is_postgres(conn):
        # The driver's statement as is: no SQL construct to build and compile on every upload.
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": advisory_key(name)})


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key `serialize_writers` takes for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def db_errors(what: str) -> Iterator[None]:
    """Translate SQLAlchemy/driver failures into StoreError (one line, no SQL or secrets)."""
    try:
        yield
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        # The driver's first line says what happened (refused, locked, disk full); it carries no
        # password (libpq and sqlite3 never echo one) and no SQL (that is on SQLAlchemy's lines).
        lines = str(orig).strip().splitlines()
        detail = lines[0][:200] if lines else type(orig).__name__
        raise StoreError(f"database error while {what}: {type(orig).__name__}: {detail}") from exc


def utcnow() -> datetime:
    return datetime.now(UTC)


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support (identical API on SQLite and PostgreSQL)."""
    if is_postgres(conn):
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)
