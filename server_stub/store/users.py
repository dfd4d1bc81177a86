"""Console users (name, role, password hash, lock-out state) and their sign-in sessions.

Passwords arrive here already hashed and sessions are looked up by the sha256 of their token,
so neither a password nor a usable session token is ever stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server_stub.errors import Conflict, NotFound
from server_stub.store.engine import db_errors, read_connection
from server_stub.store.tables import sessions, users


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    role: str
    password_hash: str
    disabled: bool
    created_at: datetime
    failed_signins: int
    locked_until: datetime | None
    last_signin_at: datetime | None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    user: UserRecord
    csrf_token: str
    expires_at: datetime


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        password_hash=row.password_hash,
        disabled=bool(row.disabled),
        created_at=row.created_at,
        failed_signins=row.failed_signins,
        locked_until=row.locked_until,
        last_signin_at=row.last_signin_at,
    )


class UserRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, name: str, role: str, password_hash: str, now: datetime) -> UserRecord:
        with db_errors("adding a user"), self._engine.begin() as conn:
            if conn.execute(sa.select(users.c.id).where(users.c.name == name)).first() is not None:
                raise Conflict(f"user {name!r} exists already")
            conn.execute(
                sa.insert(users).values(
                    name=name,
                    role=role,
                    password_hash=password_hash,
                    disabled=False,
                    created_at=now,
                    failed_signins=0,
                )
            )
            row = conn.execute(sa.select(users).where(users.c.name == name)).one()
        return _user(row)

    def get(self, name: str) -> UserRecord | None:
        with db_errors("reading a user"), read_connection(self._engine) as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return _user(row) if row is not None else None

    def list_users(self) -> list[UserRecord]:
        with db_errors("listing users"), read_connection(self._engine) as conn:
            rows = conn.execute(sa.select(users).order_by(users.c.name)).all()
        return [_user(r) for r in rows]

    def disable(self, name: str) -> UserRecord:
        """Disable the user and end every session of theirs."""
        with db_errors("disabling a user"), self._engine.begin() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
            if row is None:
                raise NotFound(f"no user named {name!r}")
            conn.execute(sa.update(users).where(users.c.id == row.id).values(disabled=True))
            conn.execute(sa.delete(sessions).where(sessions.c.user_id == row.id))
            row = conn.execute(sa.select(users).where(users.c.id == row.id)).one()
        return _user(row)

    def record_failure(self, user_id: int, locked_until: datetime | None) -> None:
        with db_errors("recording a failed sign-in"), self._engine.begin() as conn:
            conn.execute(
                sa.update(users)
                .where(users.c.id == user_id)
                .values(failed_signins=users.c.failed_signins + 1, locked_until=locked_until)
            )

    def record_success(self, user_id: int, now: datetime) -> None:
        with db_errors("recording a sign-in"), self._engine.begin() as conn:
            conn.execute(
                sa.update(users)
                .where(users.c.id == user_id)
                .values(failed_signins=0, locked_until=None, last_signin_at=now)
            )

    # --- sessions ------------------------------------------------------------------------------

    def create_session(
        self, user_id: int, token_hash: str, csrf_token: str, now: datetime, expires_at: datetime
    ) -> None:
        with db_errors("creating a session"), self._engine.begin() as conn:
            conn.execute(sa.delete(sessions).where(sessions.c.expires_at <= now))
            conn.execute(
                sa.insert(sessions).values(
                    token_hash=token_hash,
                    user_id=user_id,
                    csrf_token=csrf_token,
                    created_at=now,
                    expires_at=expires_at,
                )
            )

    def session(self, token_hash: str, now: datetime) -> SessionRecord | None:
        """The live session of an enabled user with this token hash, else None."""
        query = (
            sa.select(users, sessions.c.csrf_token, sessions.c.expires_at)
            .select_from(sessions.join(users, sessions.c.user_id == users.c.id))
            .where(
                sessions.c.token_hash == token_hash, sessions.c.expires_at > now, users.c.disabled.is_(False)
            )
        )
        with db_errors("reading a session"), read_connection(self._engine) as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return SessionRecord(user=_user(row), csrf_token=row.csrf_token, expires_at=row.expires_at)

    def end_session(self, token_hash: str) -> None:
        with db_errors("ending a session"), self._engine.begin() as conn:
            conn.execute(sa.delete(sessions).where(sessions.c.token_hash == token_hash))
