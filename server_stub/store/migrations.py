"""Versioned schema: an ordered list of migrations, applied at start, once, under a lock.

Each migration builds what it needs from its own frozen definitions, never from tables.py
(which follows the latest schema), so replaying history always produces the same database.
Several server processes may start at once against one PostgreSQL: an advisory lock makes
them take turns, and each re-reads the version inside the lock. On SQLite the migrating
transaction begins IMMEDIATE, which does the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from endpoint_agent.errors import StoreError
from server_stub.store.coltypes import BigId, UTCDateTime
from server_stub.store.engine import db_errors, serialize_writers, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "hosts",
        md,
        sa.Column("host_id", sa.String(36), primary_key=True),
        sa.Column("machine_id", sa.String(256), nullable=False, unique=True),
        sa.Column("hostname", sa.String(256), nullable=False),
        sa.Column("node_key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("enrolled_at", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=True),
        sa.Column("agent_version", sa.String(64), nullable=True),
        sa.Column("policy_version", sa.Integer, nullable=True),
        sa.Column("mode", sa.String(32), nullable=True),
        sa.Column("last_scan_at", UTCDateTime, nullable=True),
        sa.Column("counters", sa.JSON, nullable=True),
        sa.Column("circuit_state", sa.String(32), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime, nullable=True),
    )
    sa.Table(
        "policy_versions",
        md,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("etag", sa.String(80), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("policy_name", sa.String(200), nullable=False),
        sa.Column("fleet_id", sa.String(200), nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=False),
        sa.Column("rollout_percent", sa.Integer, nullable=False),
        sa.Column("rolled_back_at", UTCDateTime, nullable=True),
    )
    sa.Table(
        "events",
        md,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("host_id", sa.String(36), sa.ForeignKey("hosts.host_id"), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("detected_at", UTCDateTime, nullable=False),
        sa.Column("rule_id", sa.String(200), nullable=True),
        sa.Column("category", sa.String(200), nullable=True),
        sa.Column("action", sa.String(32), nullable=True),
        sa.Column("type", sa.String(64), nullable=True),
        sa.Column("data", sa.JSON, nullable=False),
        sa.UniqueConstraint("host_id", "event_id", name="uq_events_host_event"),
        sa.Index("ix_events_kind_id", "kind", "id"),
        sa.Index("ix_events_kind_detected", "kind", "detected_at"),
        sqlite_autoincrement=True,
    )
    md.create_all(conn)


def _v2_console(conn: Connection) -> None:
    """Named console users and their sessions, the audit log, triage and the console's indexes."""
    md = sa.MetaData()
    sa.Table(
        "users",
        md,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("failed_signins", sa.Integer, nullable=False),
        sa.Column("locked_until", UTCDateTime, nullable=True),
        sa.Column("last_signin_at", UTCDateTime, nullable=True),
    )
    sa.Table(
        "sessions",
        md,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    sa.Table(
        "audit_log",
        md,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False, index=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    for name, bucket in (("violation_daily", "day"), ("violation_hourly", "hour")):
        sa.Table(
            name,
            md,
            sa.Column(bucket, sa.String(13 if bucket == "hour" else 10), primary_key=True),
            sa.Column("rule_id", sa.String(200), primary_key=True),
            sa.Column("category", sa.String(200), primary_key=True),
            sa.Column("action", sa.String(32), primary_key=True),
            sa.Column("triage", sa.String(32), primary_key=True),
            sa.Column("n", sa.BigInteger, nullable=False),
            sa.Column("stop_seconds", sa.Float, nullable=False),
        )
    sa.Table(
        "host_daily",
        md,
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("host_id", sa.String(36), primary_key=True),
        sa.Column("triage", sa.String(32), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    md.create_all(conn)
    for column in (
        sa.Column("triage_state", sa.String(32), nullable=True),
        sa.Column("triage_note", sa.Text, nullable=True),
        sa.Column("triage_by", sa.String(64), nullable=True),
        sa.Column("triage_at", UTCDateTime, nullable=True),
        sa.Column("first_seen", UTCDateTime, nullable=True),
    ):
        kind = column.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE events ADD COLUMN {column.name} {kind}"))
    # Why a host runs in monitor mode (break-glass, circuit breaker, ...), from its heartbeat.
    conn.execute(sa.text("ALTER TABLE hosts ADD COLUMN mode_reason VARCHAR(200)"))
    # The console's aggregates (per day, category, action, rule, host, triage over a period) read
    # only this index; the host and rule pages walk the second and third by time.
    conn.execute(
        sa.text(
            "CREATE INDEX ix_events_console ON events "
            "(kind, detected_at, category, action, rule_id, host_id, triage_state)"
        )
    )
    conn.execute(sa.text("CREATE INDEX ix_events_host_detected ON events (host_id, kind, detected_at)"))
    conn.execute(sa.text("CREATE INDEX ix_events_rule_detected ON events (rule_id, kind, detected_at)"))
    # Counts by host over a period read the day's rows of every host: this index groups them by host.
    conn.execute(sa.text("CREATE INDEX ix_host_daily_host ON host_daily (host_id, day, triage, n)"))
    from server_stub.store.rollup import rebuild_counts  # reads only the columns added above

    rebuild_counts(conn)


def _v3_event_severity(conn: Connection) -> None:
    # The forensic fields (sha256, cmdline, parent, evidence, host, os) travel inside `data`;
    # severity gets a column of its own to filter on.
    conn.execute(sa.text("ALTER TABLE events ADD COLUMN severity VARCHAR(16)"))
    conn.execute(sa.text("CREATE INDEX ix_events_kind_severity_id ON events (kind, severity, id)"))


def _v4_export_cursors(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "export_cursors",
        md,
        sa.Column("sink", sa.String(64), primary_key=True),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn)


def _v5_rule_list_index(conn: Connection) -> None:
    # The console's newest-first list filtered by rule walks this index backwards and stops after a
    # page, instead of sorting every violation of the rule.
    conn.execute(sa.text("CREATE INDEX ix_events_rule_id ON events (rule_id, kind, id)"))


def _v6_rule_host_index(conn: Connection) -> None:
    # A rule's hits by host (the console's rule page) read only this index, not a million rows.
    conn.execute(sa.text("DROP INDEX ix_events_rule_detected"))
    columns = "rule_id, kind, detected_at, host_id, triage_state"
    conn.execute(sa.text(f"CREATE INDEX ix_events_rule_detected ON events ({columns})"))


def _v7_wide_policy_version(conn: Connection) -> None:
    # A heartbeat's policy version is any 64-bit value the contract admits (INTEGER is 64-bit on SQLite).
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ALTER TABLE hosts ALTER COLUMN policy_version TYPE BIGINT"))


def _v8_enrollment(conn: Connection) -> None:
    # A known host re-enrolls with its current node key, or after an admin opened it (reset).
    conn.execute(sa.text("ALTER TABLE hosts ADD COLUMN reenroll_open BOOLEAN"))
    md = sa.MetaData()
    sa.Table(
        "enroll_tokens",
        md,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
    )
    md.create_all(conn)


# The read side at fleet size: every filter of /violations (and the console's lists) seeks straight
# to its rows in receive order, (filter, kind, id), so a page stops after `limit` rows instead of
# sorting every match; hosts are listed in name order a page at a time, also by mode and policy.
READ_SIDE_INDEXES = (
    "CREATE INDEX ix_events_host_id ON events (host_id, kind, id)",
    "CREATE INDEX ix_events_category_id ON events (category, kind, id)",
    "CREATE INDEX ix_events_action_id ON events (action, kind, id)",
    "CREATE INDEX ix_events_triage_id ON events (kind, triage_state, id)",
    "CREATE INDEX ix_hosts_hostname ON hosts (hostname, host_id)",
    "CREATE INDEX ix_hosts_mode ON hosts (mode, hostname, host_id)",
    "CREATE INDEX ix_hosts_policy_version ON hosts (policy_version, hostname, host_id)",
)


def _v9_read_side_indexes(conn: Connection) -> None:
    for statement in READ_SIDE_INDEXES:
        conn.execute(sa.text(statement))


def _v10_rate_usage(conn: Connection) -> None:
    # Rate limits shared by every server process on this database (server_stub/ratesync.py).
    md = sa.MetaData()
    sa.Table(
        "rate_usage",
        md,
        sa.Column("scope", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Index("ix_rate_usage_slot", "slot"),
    )
    md.create_all(conn)


def _v11_host_running_totals(conn: Connection) -> None:
    # Counts by host over a period from two running totals per host instead of a row per host and
    # day (server_stub/store/rollup.py), filled from the violations already stored.
    md = sa.MetaData()
    sa.Table(
        "host_running",
        md,
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("host_id", sa.String(36), primary_key=True),
        sa.Column("hour", sa.String(13), primary_key=True),
        sa.Column("n_all", sa.BigInteger, nullable=False),
        sa.Column("n_open", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "host_totals",
        md,
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("host_id", sa.String(36), primary_key=True),
        sa.Column("n_all", sa.BigInteger, nullable=False),
        sa.Column("n_open", sa.BigInteger, nullable=False),
    )
    md.create_all(conn)
    from server_stub.store.rollup import rebuild_running  # reads columns every version since 2 has

    rebuild_running(conn)


# (definition, PostgreSQL's covering version): a page of a period finds its ids in the index alone
# (SQLite's indexes carry the row id already).
_TIME_INDEXES = (
    ("ix_events_kind_detected", "kind, detected_at"),
    ("ix_events_host_detected", "host_id, kind, detected_at"),
    ("ix_events_rule_detected", "rule_id, kind, detected_at, host_id, triage_state"),
)


def _v12_time_indexes_cover_ids(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        return
    for name, columns in _TIME_INDEXES:
        conn.execute(sa.text(f"DROP INDEX {name}"))
        conn.execute(sa.text(f"CREATE INDEX {name} ON events ({columns}) INCLUDE (id)"))


def _v13_cache_changes(conn: Connection) -> None:
    # What each server process's in-memory caches must drop (node keys, policies), in commit order.
    md = sa.MetaData()
    sa.Table(
        "cache_changes",
        md,
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False, index=True),
        sqlite_autoincrement=True,
    )
    md.create_all(conn)


# A page of a period walks ids inside the period's id window, whose first and last id of each
# UTC day is one seek of this index (store/events.py id_window_query), instead of reading the
# whole period and sorting it. The expression is the UTC day, spelled as store/events.py
# detected_day() compiles it; detected_at rides along for the first and last day's bounds (SQLite
# keeps the row id in every index entry).
_DAY_INDEX = {
    "sqlite": (
        "CREATE INDEX ix_events_kind_day_id ON events (kind, substr(detected_at, 1, 10), id, detected_at)"
    ),
    "postgresql": (
        "CREATE INDEX ix_events_kind_day_id ON events "
        "(kind, (CAST(timezone('UTC', detected_at) AS DATE)), id) INCLUDE (detected_at)"
    ),
}


def _v14_detection_day_index(conn: Connection) -> None:
    conn.execute(sa.text(_DAY_INDEX[conn.dialect.name]))
    # The planners' statistics of the new index (of its expression, on PostgreSQL): without them
    # a planner may take it for a selective one. SQLite only where statistics exist already.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ANALYZE events"))
    elif sa.inspect(conn).has_table("sqlite_stat1"):
        conn.execute(sa.text("ANALYZE ix_events_kind_day_id"))


def _v15_events_host_once_per_batch(conn: Connection) -> None:
    # PostgreSQL checked the foreign key once per event row (a lookup and a row lock each: about
    # a sixth of the database's work per stored event); the server now checks and locks the host
    # once per batch, in the statement that takes its advisory lock (store/events.py insert_batch).
    # Hosts are never deleted. SQLite keeps the constraint (an in-process lookup; dropping it there
    # means rebuilding the table).
    if conn.dialect.name != "postgresql":
        return
    for fk in sa.inspect(conn).get_foreign_keys("events"):
        if fk["referred_table"] == "hosts" and fk["name"]:
            conn.execute(sa.text(f'ALTER TABLE events DROP CONSTRAINT "{fk["name"]}"'))


# ix_events_kind_detected (kind, detected_at) is a prefix of ix_events_console: every read of it
# (the span of detection times, retention's batches, a long period's page, the ends of a period's
# id window) is served by the console index alone once that carries the id on PostgreSQL too
# (SQLite's indexes hold the row id already). One index fewer for each stored event.
_CONSOLE_COLUMNS = "kind, detected_at, category, action, rule_id, host_id, triage_state"


def _v16_one_time_index(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("DROP INDEX ix_events_console"))
        conn.execute(sa.text(f"CREATE INDEX ix_events_console ON events ({_CONSOLE_COLUMNS}) INCLUDE (id)"))
    conn.execute(sa.text("DROP INDEX ix_events_kind_detected"))


# A host's or a rule's events of a period are walked in their (column, kind, id) indexes inside
# the period's id window (store/events.py plan), as every other filter's are; their time indexes
# cost each stored event ~5 us of PostgreSQL's CPU for reads the id walk serves.
def _v17_host_rule_by_id(conn: Connection) -> None:
    conn.execute(sa.text("DROP INDEX ix_events_host_detected"))
    conn.execute(sa.text("DROP INDEX ix_events_rule_detected"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "hosts, policy versions, events", _v1_initial),
    Migration(2, "console users, sessions, audit log, triage", _v2_console),
    Migration(3, "events: severity column", _v3_event_severity),
    Migration(4, "export cursors", _v4_export_cursors),
    Migration(5, "index for the newest violations of a rule", _v5_rule_list_index),
    Migration(6, "a rule's hits by host from an index", _v6_rule_host_index),
    Migration(7, "hosts: 64-bit policy version", _v7_wide_policy_version),
    Migration(8, "enrollment: host binding, enroll tokens", _v8_enrollment),
    Migration(9, "indexes for every filter of the violation and host lists", _v9_read_side_indexes),
    Migration(10, "rate limits shared across server processes", _v10_rate_usage),
    Migration(11, "running totals of violations by host", _v11_host_running_totals),
    Migration(12, "time indexes carry the event id (PostgreSQL)", _v12_time_indexes_cover_ids),
    Migration(13, "cache invalidation feed", _v13_cache_changes),
    Migration(14, "events by detection day in receive order", _v14_detection_day_index),
    Migration(15, "events: the host checked once per batch (PostgreSQL)", _v15_events_host_once_per_batch),
    Migration(16, "one time index: the console index carries the event id", _v16_one_time_index),
    Migration(17, "host and rule periods walked by id: their time indexes dropped", _v17_host_rule_by_id),
)

_version_md = sa.MetaData()
_schema_version = sa.Table(
    "schema_version",
    _version_md,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return int(
        conn.execute(sa.select(sa.func.coalesce(sa.func.max(_schema_version.c.version), 0))).scalar_one()
    )


def migrate(engine: Engine, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the database to the newest schema; returns the version it is at."""
    latest = migrations[-1].version if migrations else 0
    with db_errors("migrating the schema"), engine.begin() as conn:
        serialize_writers(conn, "endpoint-server:migrate")
        _schema_version.create(conn, checkfirst=True)
        version = current_version(conn)
        if version > latest:
            # A newer server migrated this database; running old code on it could corrupt it.
            raise StoreError(f"database schema is version {version}, newer than this server knows ({latest})")
        for migration in migrations:
            if migration.version <= version:
                continue
            log.info("applying schema migration %d: %s", migration.version, migration.description)
            migration.apply(conn)
            conn.execute(sa.insert(_schema_version).values(version=migration.version, applied_at=utcnow()))
            version = migration.version
    return version
