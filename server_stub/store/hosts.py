"""Enrolled hosts: identity (node key hash), last contact, last heartbeat."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from endpoint_contract.heartbeat import Heartbeat
from server_stub.store.engine import db_errors, dialect_insert, read_connection
from server_stub.store.tables import hosts


@dataclass(frozen=True, slots=True)
class HostRecord:
    host_id: str
    machine_id: str
    hostname: str
    enrolled_at: datetime
    last_seen: datetime | None = None
    agent_version: str | None = None
    policy_version: int | None = None
    mode: str | None = None
    last_scan_at: datetime | None = None
    counters: dict[str, int] = field(default_factory=dict)
    circuit_state: str | None = None
    heartbeat_at: datetime | None = None
    mode_reason: str | None = None


def _record(row: Any) -> HostRecord:
    return HostRecord(
        host_id=row.host_id,
        machine_id=row.machine_id,
        hostname=row.hostname,
        enrolled_at=row.enrolled_at,
        last_seen=row.last_seen,
        agent_version=row.agent_version,
        policy_version=row.policy_version,
        mode=row.mode,
        last_scan_at=row.last_scan_at,
        counters=dict(row.counters or {}),
        circuit_state=row.circuit_state,
        heartbeat_at=row.heartbeat_at,
        mode_reason=row.mode_reason,
    )


class HostRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def enroll(self, *, machine_id: str, hostname: str, node_key_hash: str, now: datetime) -> str:
        """The host id for `machine_id` (new or existing); its node key is replaced by this one."""
        with db_errors("enrolling a host"), self._engine.begin() as conn:
            stmt = dialect_insert(conn, hosts).values(
                host_id=str(uuid.uuid4()),
                machine_id=machine_id,
                hostname=hostname,
                node_key_hash=node_key_hash,
                enrolled_at=now,
                last_seen=now,
            )
            # Re-enrolling keeps the host id (its history stays attached) and rotates the key.
            stmt = stmt.on_conflict_do_update(
                index_elements=[hosts.c.machine_id],
                set_={"hostname": hostname, "node_key_hash": node_key_hash, "last_seen": now},
            )
            conn.execute(stmt)
            host_id = conn.execute(
                sa.select(hosts.c.host_id).where(hosts.c.machine_id == machine_id)
            ).scalar_one()
        return str(host_id)

    def authenticate(self, node_key_hash: str, now: datetime) -> HostRecord | None:
        """The host owning this key, marked as seen now; None for an unknown (or rotated) key.

        Read first: an unknown key (a flood of made-up tokens) never writes to the database.
        """
        with db_errors("looking up a node key"), read_connection(self._engine) as conn:
            row = conn.execute(sa.select(hosts).where(hosts.c.node_key_hash == node_key_hash)).first()
        if row is None:
            return None
        with db_errors("looking up a node key"), self._engine.begin() as conn:
            conn.execute(sa.update(hosts).where(hosts.c.host_id == row.host_id).values(last_seen=now))
        return replace(_record(row), last_seen=now)

    def heartbeat(self, host_id: str, beat: Heartbeat, now: datetime) -> None:
        with db_errors("recording a heartbeat"), self._engine.begin() as conn:
            conn.execute(
                sa.update(hosts)
                .where(hosts.c.host_id == host_id)
                .values(
                    agent_version=beat.agent_version,
                    policy_version=beat.policy_version,
                    mode=beat.mode,
                    last_scan_at=beat.last_scan_at,
                    counters=dict(beat.counters),
                    circuit_state=beat.circuit_state,
                    mode_reason=beat.mode_reason,
                    heartbeat_at=now,
                    last_seen=now,
                )
            )

    def get(self, host: str) -> HostRecord | None:
        """One host by id or hostname."""
        with db_errors("reading a host"), read_connection(self._engine) as conn:
            row = conn.execute(
                sa.select(hosts).where(sa.or_(hosts.c.host_id == host, hosts.c.hostname == host)).limit(1)
            ).first()
        return _record(row) if row is not None else None

    def search(self, text: str, *, offset: int, limit: int) -> tuple[list[HostRecord], int]:
        """Hosts whose name or id starts with `text`, by name; and how many match in all."""
        conds = []
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append(
                sa.or_(
                    hosts.c.hostname.like(escaped + "%", escape="\\"),
                    hosts.c.host_id.like(escaped + "%", escape="\\"),
                )
            )
        with db_errors("searching hosts"), read_connection(self._engine) as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(hosts).where(*conds)).scalar_one()
            rows = conn.execute(
                sa.select(hosts)
                .where(*conds)
                .order_by(hosts.c.hostname, hosts.c.host_id)
                .offset(max(offset, 0))
                .limit(limit)
            ).all()
        return [_record(r) for r in rows], int(total)

    def list_hosts(self) -> list[HostRecord]:
        with db_errors("listing hosts"), read_connection(self._engine) as conn:
            rows = conn.execute(sa.select(hosts).order_by(hosts.c.hostname, hosts.c.host_id)).all()
        return [_record(r) for r in rows]
