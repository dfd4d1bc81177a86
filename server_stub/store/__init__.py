"""The server's database (SQLAlchemy Core): SQLite WAL by default, PostgreSQL at scale.

Everything the server remembers lives here, so any number of server processes can share one
PostgreSQL database. Failures surface as endpoint_agent.errors.StoreError.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from server_stub.store.audit import AuditRepo
from server_stub.store.changes import ChangeFeed
from server_stub.store.engine import create_db_engine, normalize_url, sqlite_url
from server_stub.store.enroll_tokens import EnrollTokenRepo
from server_stub.store.events import EventFilter, EventInsert, EventRepo, EventRow, event_insert
from server_stub.store.exports import ExportRepo, ExportRow
from server_stub.store.hosts import EnrollRefused, HostRecord, HostRepo, NodeIdentity
from server_stub.store.migrations import migrate
from server_stub.store.policies import NewPolicy, PolicyRepo, PolicyVersion, Rollout, ServedPolicy
from server_stub.store.ratelimits import RateUsageRepo
from server_stub.store.retention import RetentionRepo
from server_stub.store.stats import StatsRepo, Summary
from server_stub.store.users import UserRepo


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.hosts = HostRepo(engine)
        self.policies = PolicyRepo(engine)
        self.events = EventRepo(engine)
        self.stats = StatsRepo(engine, settle_hosts=self.hosts.settle)
        self.users = UserRepo(engine)
        self.audit = AuditRepo(engine)
        self.exports = ExportRepo(engine)
        self.enroll_tokens = EnrollTokenRepo(engine)
        self.rate_usage = RateUsageRepo(engine)
        self.retention = RetentionRepo(engine)
        self.changes = ChangeFeed(engine)

    @classmethod
    def open(cls, url: str, pool_size: int | None = None) -> Store:
        """Connect and migrate to the newest schema (safe to run from several processes at once).

        `pool_size`: database connections kept open (server_stub/store/engine.py sizes the default).
        """
        engine = create_db_engine(url, pool_size)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()


__all__ = [
    "EnrollRefused",
    "EventFilter",
    "EventInsert",
    "EventRow",
    "ExportRow",
    "HostRecord",
    "HostRepo",
    "NewPolicy",
    "NodeIdentity",
    "PolicyRepo",
    "PolicyVersion",
    "Rollout",
    "ServedPolicy",
    "Store",
    "Summary",
    "event_insert",
    "normalize_url",
    "sqlite_url",
]
