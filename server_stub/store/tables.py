"""The current schema, for queries. Migrations (migrations.py) bring a database to it.

When a migration changes the schema, change these definitions to match; a test compares
the two after migrating an empty database.
"""

from __future__ import annotations

import sqlalchemy as sa

from server_stub.store.coltypes import BigId, UTCDateTime

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("host_id", sa.String(36), primary_key=True),
    sa.Column("machine_id", sa.String(256), nullable=False, unique=True),
    sa.Column("hostname", sa.String(256), nullable=False),
    sa.Column("node_key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("enrolled_at", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=True),
    sa.Column("agent_version", sa.String(64), nullable=True),
    sa.Column("policy_version", sa.BigInteger, nullable=True),
    sa.Column("mode", sa.String(32), nullable=True),
    sa.Column("last_scan_at", UTCDateTime, nullable=True),
    sa.Column("counters", sa.JSON, nullable=True),
    sa.Column("circuit_state", sa.String(32), nullable=True),
    sa.Column("heartbeat_at", UTCDateTime, nullable=True),
    sa.Column("mode_reason", sa.String(200), nullable=True),
    sa.Column("reenroll_open", sa.Boolean, nullable=True),  # an admin's reset: the next enroll binds
    # migration 9: the host list, a page at a time in name order (all hosts, or by mode or policy)
    sa.Index("ix_hosts_hostname", "hostname", "host_id"),
    sa.Index("ix_hosts_mode", "mode", "hostname", "host_id"),
    sa.Index("ix_hosts_policy_version", "policy_version", "hostname", "host_id"),
)

enroll_tokens = sa.Table(
    "enroll_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("max_uses", sa.Integer, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
)

policy_versions = sa.Table(
    "policy_versions",
    metadata,
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

# Violations and agent events share one table: one receive-id sequence for pagination and one
# (host_id, event_id) uniqueness for idempotent uploads.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # migration 15: PostgreSQL has no such foreign key any more (an upload checks its host once).
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
    # Triage by an analyst (acknowledged, false_positive, escalated); NULL while open.
    sa.Column("triage_state", sa.String(32), nullable=True),
    sa.Column("triage_note", sa.Text, nullable=True),
    sa.Column("triage_by", sa.String(64), nullable=True),
    sa.Column("triage_at", UTCDateTime, nullable=True),
    sa.Column("first_seen", UTCDateTime, nullable=True),
    # migration 3: the rule's severity (low..critical), filterable; NULL on rows stored before it.
    sa.Column("severity", sa.String(16), nullable=True),
    sa.UniqueConstraint("host_id", "event_id", name="uq_events_host_event"),
    sa.Index("ix_events_kind_id", "kind", "id"),
    # migration 16: the one time index (ix_events_kind_detected dropped); on PostgreSQL it carries the id
    sa.Index(
        "ix_events_console",
        "kind",
        "detected_at",
        "category",
        "action",
        "rule_id",
        "host_id",
        "triage_state",
        postgresql_include=["id"],
    ),
    # migration 17: no (host_id, ...) or (rule_id, ...) time index (their periods are walked by id)
    sa.Index("ix_events_kind_severity_id", "kind", "severity", "id"),
    sa.Index("ix_events_rule_id", "rule_id", "kind", "id"),
    # migration 9: each filter of the lists seeks its rows in receive order
    sa.Index("ix_events_host_id", "host_id", "kind", "id"),
    sa.Index("ix_events_category_id", "category", "kind", "id"),
    sa.Index("ix_events_action_id", "action", "kind", "id"),
    sa.Index("ix_events_triage_id", "kind", "triage_state", "id"),
    sqlite_autoincrement=True,
)


# Rollups of violations (server_stub/store/rollup.py): counts per day or hour and dimension.
def _rollup_table(name: str, bucket: str, width: int) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column(bucket, sa.String(width), primary_key=True),
        sa.Column("rule_id", sa.String(200), primary_key=True),
        sa.Column("category", sa.String(200), primary_key=True),
        sa.Column("action", sa.String(32), primary_key=True),
        sa.Column("triage", sa.String(32), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("stop_seconds", sa.Float, nullable=False),
    )


violation_daily = _rollup_table("violation_daily", "day", 10)
violation_hourly = _rollup_table("violation_hourly", "hour", 13)

host_daily = sa.Table(
    "host_daily",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("host_id", sa.String(36), primary_key=True),
    sa.Column("triage", sa.String(32), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Index("ix_host_daily_host", "host_id", "day", "triage", "n"),
)

# Running totals by host (server_stub/store/rollup.py): scope "" counts every rule, else one rule.
host_running = sa.Table(
    "host_running",
    metadata,
    sa.Column("scope", sa.String(200), primary_key=True),
    sa.Column("host_id", sa.String(36), primary_key=True),
    sa.Column("hour", sa.String(13), primary_key=True),
    sa.Column("n_all", sa.BigInteger, nullable=False),  # violations up to the end of this hour
    sa.Column("n_open", sa.BigInteger, nullable=False),  # of which untriaged
)

host_totals = sa.Table(
    "host_totals",
    metadata,
    sa.Column("scope", sa.String(200), primary_key=True),
    sa.Column("host_id", sa.String(36), primary_key=True),
    sa.Column("n_all", sa.BigInteger, nullable=False),
    sa.Column("n_open", sa.BigInteger, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
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

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sqlite_autoincrement=True,
)

# One row per export sink (server_stub/export): how far it got, and which server process holds it.
export_cursors = sa.Table(
    "export_cursors",
    metadata,
    sa.Column("sink", sa.String(64), primary_key=True),
    sa.Column("last_id", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("lease_until", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# What each rate-limit key consumed per one-second slot, summed over every server process that
# shares this database (server_stub/ratesync.py); rows older than the window read are deleted.
rate_usage = sa.Table(
    "rate_usage",
    metadata,
    sa.Column("scope", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Index("ix_rate_usage_slot", "slot"),
)

# Changes that in-memory caches of every server process must see (server_stub/store/changes.py).
cache_changes = sa.Table(
    "cache_changes",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sqlite_autoincrement=True,
)
