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
    sa.Column("policy_version", sa.Integer, nullable=True),
    sa.Column("mode", sa.String(32), nullable=True),
    sa.Column("last_scan_at", UTCDateTime, nullable=True),
    sa.Column("counters", sa.JSON, nullable=True),
    sa.Column("circuit_state", sa.String(32), nullable=True),
    sa.Column("heartbeat_at", UTCDateTime, nullable=True),
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
