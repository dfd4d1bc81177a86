"""Enrollment tokens for rollouts: stored as sha256 digests, each with an expiry and a use count."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server_stub.store.engine import db_errors, read_connection
from server_stub.store.tables import enroll_tokens


class EnrollTokenRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, token_hash: str, *, expires_at: datetime, max_uses: int, by: str, now: datetime) -> None:
        with db_errors("creating an enroll token"), self._engine.begin() as conn:
            conn.execute(
                sa.insert(enroll_tokens).values(
                    token_hash=token_hash,
                    created_at=now,
                    expires_at=expires_at,
                    max_uses=max_uses,
                    uses=0,
                    created_by=by[:64],
                )
            )

    def usable(self, token_hash: str, now: datetime) -> bool:
        """Whether this token exists, has not expired and has uses left (a read, never a write)."""
        with db_errors("looking up an enroll token"), read_connection(self._engine) as conn:
            row = conn.execute(
                sa.select(enroll_tokens.c.token_hash).where(
                    enroll_tokens.c.token_hash == token_hash,
                    enroll_tokens.c.expires_at > now,
                    enroll_tokens.c.uses < enroll_tokens.c.max_uses,
                )
            ).first()
        return row is not None

    def use(self, token_hash: str, now: datetime) -> bool:
        """Count one use; False when it has expired or has none left (one statement: no race)."""
        with db_errors("using an enroll token"), self._engine.begin() as conn:
            result = conn.execute(
                sa.update(enroll_tokens)
                .where(
                    enroll_tokens.c.token_hash == token_hash,
                    enroll_tokens.c.expires_at > now,
                    enroll_tokens.c.uses < enroll_tokens.c.max_uses,
                )
                .values(uses=enroll_tokens.c.uses + 1)
            )
        return result.rowcount == 1
