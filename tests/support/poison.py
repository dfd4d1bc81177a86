"""A database write that fails on demand: a trigger refusing any host row with one hostname.

    poison_hostname(url, "poison")   # SQLite or PostgreSQL URL; the schema must exist already

Real failure, real rollback: a transaction that writes such a row fails as a full disk or a lost
connection would, and everything it wrote before is undone by the database itself.
"""

from __future__ import annotations

import sqlalchemy as sa

from server_stub.store.engine import normalize_url


def poison_hostname(url: str, hostname: str) -> None:
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    "CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.hostname = '{hostname}' THEN RAISE EXCEPTION 'poisoned row'; END IF; "
                    "RETURN NEW; END $$"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER test_poison BEFORE INSERT OR UPDATE ON hosts "
                    "FOR EACH ROW EXECUTE FUNCTION test_poison()"
                )
            else:
                for event in ("INSERT", "UPDATE"):
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER test_poison_{event.lower()} BEFORE {event} ON hosts "
                        f"WHEN NEW.hostname = '{hostname}' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
                    )
    finally:
        engine.dispose()
