"""The audit log: who published, rolled out, triaged or changed a user, and when. Append-only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from server_stub.store.engine import db_errors, read_connection
from server_stub.store.tables import audit_log

# What is audited (the `action` column).
PUBLISH = "publish"
ROLLOUT = "rollout"
ROLLBACK = "rollback"
TRIAGE = "triage"
USER_ADD = "user_add"
USER_DISABLE = "user_disable"
HOST_RESET = "host_reset"
ENROLL_TOKEN_CREATE = "enroll_token_create"
ACTIONS = (PUBLISH, ROLLOUT, ROLLBACK, TRIAGE, USER_ADD, USER_DISABLE)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str  # a user name, or "admin token" for automation
    role: str
    action: str
    target: str
    detail: str


def append(
    conn: Connection, at: datetime, actor: str, role: str, action: str, target: str, detail: str
) -> None:
    """Write one entry inside the caller's transaction, so the change and its record commit together."""
    conn.execute(
        sa.insert(audit_log).values(
            at=at, actor=actor[:64], role=role, action=action, target=target[:256], detail=detail[:4000]
        )
    )


class AuditRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, at: datetime, actor: str, role: str, action: str, target: str, detail: str = "") -> None:
        with db_errors("writing the audit log"), self._engine.begin() as conn:
            append(conn, at, actor, role, action, target, detail)

    def publishers(self) -> dict[str, str]:
        """Target ("policy version N") -> who published it."""
        query = sa.select(audit_log.c.target, audit_log.c.actor).where(audit_log.c.action == PUBLISH)
        with db_errors("reading the audit log"), read_connection(self._engine) as conn:
            return {r.target: r.actor for r in conn.execute(query)}

    def entries(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> tuple[list[AuditEntry], bool]:
        """Newest first; and whether older entries follow."""
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
        if action:
            query = query.where(audit_log.c.action == action)
        if actor:
            query = query.where(audit_log.c.actor == actor)
        if before_id is not None:
            query = query.where(audit_log.c.id < before_id)
        with db_errors("reading the audit log"), read_connection(self._engine) as conn:
            rows = conn.execute(query).all()
        items = [
            AuditEntry(
                id=r.id,
                at=r.at,
                actor=r.actor,
                role=r.role,
                action=r.action,
                target=r.target,
                detail=r.detail,
            )
            for r in rows[:limit]
        ]
        return items, len(rows) > limit
