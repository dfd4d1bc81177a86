"""Published policy envelopes, their rollout percent, and rollback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from server_stub.errors import Conflict, NotFound
from server_stub.rollout import choose_version
from server_stub.store.changes import POLICY, record_change
from server_stub.store.engine import db_errors, read_connection, serialize_writers, utcnow
from server_stub.store.tables import policy_versions

_LOCK = "endpoint-server:policy"


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    version: int
    etag: str
    key_id: str
    policy_name: str
    fleet_id: str
    published_at: datetime
    rollout_percent: int
    rolled_back_at: datetime | None


@dataclass(frozen=True, slots=True)
class ServedPolicy:
    version: int
    envelope: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class Rollout:
    """One version that can be served: its rollout percent, envelope and ETag."""

    version: int
    percent: int
    envelope: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class NewPolicy:
    version: int
    envelope: str
    etag: str
    key_id: str
    policy_name: str
    fleet_id: str
    rollout_percent: int


_META = [c for c in policy_versions.c if c.name != "envelope"]


def _version(row: Any) -> PolicyVersion:
    return PolicyVersion(
        version=row.version,
        etag=row.etag,
        key_id=row.key_id,
        policy_name=row.policy_name,
        fleet_id=row.fleet_id,
        published_at=row.published_at,
        rollout_percent=row.rollout_percent,
        rolled_back_at=row.rolled_back_at,
    )


def _active(conn: Connection) -> list[PolicyVersion]:
    rows = conn.execute(
        sa.select(*_META)
        .where(policy_versions.c.rolled_back_at.is_(None))
        .order_by(policy_versions.c.version.desc())
    ).all()
    return [_version(r) for r in rows]


class PolicyRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Called after a change commits: this process's caches refresh at once, not at the next poll.
        self.on_change: list[Callable[[], object]] = []

    def _changed(self) -> None:
        for listener in self.on_change:
            listener()

    def publish(self, new: NewPolicy, now: datetime) -> tuple[PolicyVersion, int | None]:
        """Store a new version; returns it and the previously newest active version."""
        with db_errors("publishing a policy"), self._engine.begin() as conn:
            serialize_writers(conn, _LOCK)
            # Higher than every version ever published, rolled back or not: agents that activated
            # a version refuse anything older or equal, so a number must never be reused.
            highest = conn.execute(sa.select(sa.func.max(policy_versions.c.version))).scalar_one()
            if highest is not None and new.version <= highest:
                raise Conflict(
                    f"policy version {new.version} is not higher than the newest published version "
                    f"{highest}; bump `version` in the policy file"
                )
            active = _active(conn)
            conn.execute(
                sa.insert(policy_versions).values(
                    version=new.version,
                    envelope=new.envelope,
                    etag=new.etag,
                    key_id=new.key_id,
                    policy_name=new.policy_name,
                    fleet_id=new.fleet_id,
                    published_at=now,
                    rollout_percent=new.rollout_percent,
                    rolled_back_at=None,
                )
            )
            row = conn.execute(sa.select(*_META).where(policy_versions.c.version == new.version)).one()
            record_change(conn, POLICY, "*", now)
        self._changed()
        return _version(row), (active[0].version if active else None)

    def for_host(self, host_id: str) -> ServedPolicy | None:
        with db_errors("reading the policy"), read_connection(self._engine) as conn:
            active = _active(conn)
            version = choose_version(host_id, [(v.version, v.rollout_percent) for v in active])
            if version is None:
                return None
            row = conn.execute(
                sa.select(policy_versions.c.envelope, policy_versions.c.etag).where(
                    policy_versions.c.version == version
                )
            ).one()
        return ServedPolicy(version=version, envelope=row.envelope.encode("utf-8"), etag=row.etag)

    def rollouts(self) -> list[Rollout]:
        """What can be served, newest first: active versions down to the first one at 100%
        (no host ever gets past it, rollout.py), each with its envelope (held in memory)."""
        with db_errors("reading the policy"), read_connection(self._engine) as conn:
            chosen: list[PolicyVersion] = []
            for version in _active(conn):
                chosen.append(version)
                if version.rollout_percent >= 100:
                    break
            if not chosen:
                return []
            rows = conn.execute(
                sa.select(policy_versions.c.version, policy_versions.c.envelope).where(
                    policy_versions.c.version.in_([v.version for v in chosen])
                )
            ).all()
        envelopes = {r.version: r.envelope.encode("utf-8") for r in rows}
        return [Rollout(v.version, v.rollout_percent, envelopes[v.version], v.etag) for v in chosen]

    def set_rollout(self, percent: int, now: datetime | None = None) -> PolicyVersion:
        """Change the rollout percent of the newest active version."""
        with db_errors("changing the rollout"), self._engine.begin() as conn:
            serialize_writers(conn, _LOCK)
            active = _active(conn)
            if not active:
                raise NotFound("no policy is published")
            newest = active[0].version
            conn.execute(
                sa.update(policy_versions)
                .where(policy_versions.c.version == newest)
                .values(rollout_percent=percent)
            )
            row = conn.execute(sa.select(*_META).where(policy_versions.c.version == newest)).one()
            record_change(conn, POLICY, "*", now or utcnow())
        self._changed()
        return _version(row)

    def rollback(self, now: datetime) -> tuple[int, PolicyVersion]:
        """Withdraw the newest version; the one before becomes current for every host."""
        with db_errors("rolling back the policy"), self._engine.begin() as conn:
            serialize_writers(conn, _LOCK)
            active = _active(conn)
            if not active:
                raise NotFound("no policy is published")
            if len(active) < 2:
                raise Conflict(
                    f"version {active[0].version} is the only published version; nothing to roll back to"
                )
            newest, previous = active[0].version, active[1].version
            conn.execute(
                sa.update(policy_versions)
                .where(policy_versions.c.version == newest)
                .values(rolled_back_at=now)
            )
            conn.execute(
                sa.update(policy_versions)
                .where(policy_versions.c.version == previous)
                .values(rollout_percent=100)
            )
            row = conn.execute(sa.select(*_META).where(policy_versions.c.version == previous)).one()
            record_change(conn, POLICY, "*", now)
        self._changed()
        return newest, _version(row)

    def envelope(self, version: int) -> bytes | None:
        with db_errors("reading a policy"), read_connection(self._engine) as conn:
            text = conn.execute(
                sa.select(policy_versions.c.envelope).where(policy_versions.c.version == version)
            ).scalar_one_or_none()
        return None if text is None else text.encode("utf-8")

    def versions(self) -> list[PolicyVersion]:
        with db_errors("listing policy versions"), read_connection(self._engine) as conn:
            rows = conn.execute(sa.select(*_META).order_by(policy_versions.c.version.desc())).all()
        return [_version(r) for r in rows]
