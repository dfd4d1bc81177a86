"""Fill a server database with a fleet's worth of hosts and violations in minutes, not half an hour.

What real uploads leave behind, compressed into `days` days: the same columns and the same JSON
`data` as server_stub/store/events.py stores (the rows start from a real `Violation` put through
`event_insert`), ids in the order the events were detected, and the rollups an upload keeps (the
counts by `rollup.apply_counts` chunk by chunk, the running totals by host rebuilt once at the
end). Fast because it goes around the per-request path: SQLite gets multi-row executemany in big
transactions with `synchronous = OFF`, PostgreSQL gets COPY, and into an empty events table the
secondary indexes are dropped and built once at the end.

    from bench.bulkfill import fill
    filled = fill(store.engine, hosts=10_000, violations=1_000_000)   # a migrated, empty database

or from a shell (migrates first):

    python -m bench.bulkfill --db sqlite:///tmp/big.db --hosts 100000 --violations 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

RULES = [(f"rule-{i:02d}", ("p2p", "remote-access", "mining", "vpn", "unapproved")[i % 5]) for i in range(24)]
ACTIONS = ("reported", "reported", "would_block", "killed", "killed", "suspended", "kill_failed", "denied")
SEVERITIES = ("low", "medium", "medium", "high", "critical")
AGENT_TYPES = ("circuit_open", "events_dropped", "policy_unsafe", "circuit_closed")
CHUNK = 50_000

_EVENT_COLUMNS = (
    "host_id", "event_id", "kind", "received_at", "detected_at", "rule_id", "category", "action", "type",
    "data", "triage_state", "triage_note", "triage_by", "triage_at", "first_seen", "severity",
)  # fmt: skip
_HOST_COLUMNS = (
    "host_id", "machine_id", "hostname", "node_key_hash", "enrolled_at", "last_seen", "agent_version",
    "policy_version", "mode", "mode_reason", "circuit_state", "counters", "heartbeat_at", "last_scan_at",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Filled:
    host_ids: list[str]  # the first tenth are the noisy hosts (three quarters of the violations)
    hostnames: list[str]
    violations: int
    agent_events: int
    seconds: float


def fill(
    engine: Engine,
    *,
    hosts: int,
    violations: int,
    now: datetime | None = None,
    days: int = 30,
    seed: int = 7,
    agent_events: int | None = None,
    triaged: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> Filled:
    """Store `hosts` enrolled hosts and `violations` violations (plus agent events, by default one
    per 200 violations) detected over the last `days` days before `now`.

    A tenth of the hosts send three quarters of the violations, rule hits fall off exponentially
    over RULES, a `triaged` share is acknowledged. Deterministic for a seed. The rollups are
    what uploads leave; ANALYZE runs at the end.
    """
    from server_stub.store import rollup
    from server_stub.store.tables import events

    started = time.monotonic()
    now = now or datetime.now(UTC)
    rnd = random.Random(seed)
    say = progress or (lambda _msg: None)
    agent_n = violations // 200 if agent_events is None else agent_events
    host_ids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(hosts)]
    width = max(5, len(str(hosts)))
    hostnames = [f"ws-{i:0{width}d}" for i in range(hosts)]
    with _bulk(engine) as conn:
        _copy(conn, "hosts", _HOST_COLUMNS, _host_rows(host_ids, hostnames, now, rnd))
        empty = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 0
        dropped = _drop_indexes(conn) if empty else []
    templates = _templates()
    noisy = max(1, hosts // 10)
    # Detection times, oldest first: ids then follow the order events arrived, as on a real server.
    span = days * 86400.0
    times = sorted(rnd.random() * span for _ in range(violations + agent_n))
    agent_at = set(rnd.sample(range(len(times)), agent_n)) if agent_n else set()
    start = now - timedelta(seconds=span)
    done = 0
    for lo in range(0, len(times), CHUNK):
        rows: list[tuple[Any, ...]] = []
        facts: list[rollup.Fact] = []
        for i in range(lo, min(lo + CHUNK, len(times))):
            detected = start + timedelta(seconds=times[i])
            h = rnd.randrange(noisy) if rnd.random() < 0.75 else rnd.randrange(hosts)
            if i in agent_at:
                rows.append(_agent_row(templates, host_ids[h], hostnames[h], detected, rnd))
                continue
            row, fact = _violation_row(templates, host_ids[h], hostnames[h], detected, now, rnd, triaged)
            rows.append(row)
            facts.append(fact)
        with _bulk(engine) as conn:
            _copy(conn, "events", _EVENT_COLUMNS, rows)
            rollup.apply_counts(conn, facts, +1)
        done += len(rows)
        say(f"{done:,} of {len(times):,} events stored")
    with _bulk(engine) as conn:
        if dropped:
            say(f"building {len(dropped)} indexes")
        for sql in dropped:
            conn.exec_driver_sql(sql)
        say("running totals by host")
        rollup.rebuild_running(conn)  # one window sum instead of a chunk's hours joined to themselves
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return Filled(host_ids, hostnames, violations, agent_n, time.monotonic() - started)


# --- rows ------------------------------------------------------------------------------------


# Values that change per row; the rest of an event's JSON text is fixed per rule.
_VARYING = (
    "event_id",
    "detected_at",
    "first_seen",
    "last_seen",
    "severity",
    "action",
    "pid",
    "host_id",
    "hostname",
)
_AGENT_VARYING = ("event_id", "detected_at", "type", "host_id", "hostname")


@dataclass(frozen=True, slots=True)
class _Templates:
    """The JSON text of a real Violation (and AgentEvent) put through event_insert, as %-formats
    with the varying values left open: encoding a row is one string format, not a json.dumps."""

    violation: dict[str, str]  # rule id -> format
    agent: str

    def violation_text(self, rule: str, **values: Any) -> str:
        return self.violation[rule] % {k: _json(v) for k, v in values.items()}

    def agent_text(self, **values: Any) -> str:
        return self.agent % {k: _json(v) for k, v in values.items()}


def _json(value: Any) -> str:
    """JSON of the varying values, all ours (ids, times, names, numbers: nothing to escape)."""
    if isinstance(value, datetime):
        return f'"{_iso(value)}"'
    return f'"{value}"' if isinstance(value, str) else str(value)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _format(data: dict[str, Any], varying: Sequence[str]) -> str:
    marked = {k: (f"@@{k}@@" if k in varying else v) for k, v in data.items()}
    text = json.dumps(marked).replace("%", "%%")
    for k in varying:
        text = text.replace(f'"@@{k}@@"', f"%({k})s")
    return text


def _templates() -> _Templates:
    from endpoint_contract.events import AgentEvent, Violation
    from server_stub.store.events import event_insert

    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    formats = {}
    for rule, category in RULES:
        proc = rule.replace("rule", "proc")
        v = Violation.model_validate(
            {
                "event_id": str(uuid.UUID(int=1, version=4)), "detected_at": at, "rule_id": rule,
                "category": category, "severity": "medium", "action": "killed", "pid": 4242,
                "process_name": proc, "exe": f"/usr/bin/{proc}", "cmdline": f"{proc} --serve",
                "ppid": 1, "parent_name": "systemd", "username": "alice",
                "evidence": [{"attribute": "name", "pattern": proc, "value": proc}],
                "reason": f"process name matches {rule}", "policy_version": 2, "first_seen": at,
                "last_seen": at, "hostname": "ws-0", "os": "Debian GNU/Linux 13",
            }
        )  # fmt: skip
        data = _data(event_insert(v, "h", "ws-0").data)
        if data["detected_at"] != _iso(at):  # the contract changed how it writes times: follow it
            raise RuntimeError(
                f"bench.bulkfill: times are written as {data['detected_at']!r}, not {_iso(at)!r}"
            )
        formats[rule] = _format(data, _VARYING)
    a = AgentEvent.model_validate(
        {"event_id": str(uuid.UUID(int=2, version=4)), "detected_at": at, "type": "events_dropped",
         "detail": {"reason": "queue full"}, "count": 3}
    )  # fmt: skip
    return _Templates(formats, _format(_data(event_insert(a, "h", "ws-0").data), _AGENT_VARYING))


def _data(data: dict[str, Any] | str) -> dict[str, Any]:
    """The stored object (an upload's row may carry its JSON text instead)."""
    return json.loads(data) if isinstance(data, str) else data


def _violation_row(
    t: _Templates, host_id: str, hostname: str, detected: datetime, now: datetime, rnd: random.Random,
    triaged: float,
) -> tuple[tuple[Any, ...], Any]:  # fmt: skip
    from server_stub.store import rollup

    rule, category = RULES[min(int(rnd.expovariate(0.25)), len(RULES) - 1)]
    action = ACTIONS[int(rnd.random() * len(ACTIONS))]
    severity = SEVERITIES[int(rnd.random() * len(SEVERITIES))]
    first = detected - timedelta(seconds=int(rnd.random() * 4))
    event_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    data = t.violation_text(
        rule, event_id=event_id, detected_at=detected, first_seen=first, last_seen=detected,
        severity=severity, action=action, pid=1000 + int(rnd.random() * 30000),
        host_id=host_id, hostname=hostname,
    )  # fmt: skip
    state = "acknowledged" if rnd.random() < triaged else None
    received = detected + timedelta(seconds=5)
    row = (
        host_id, event_id, "violation", received, detected, rule, category, action, None, data, state,
        "bench" if state else None, "bench" if state else None, now if state else None, first, severity,
    )  # fmt: skip
    stop = max(0.0, (detected - first).total_seconds()) if action in rollup.STOPPED else 0.0
    fact = rollup.Fact(detected, host_id, rule, category, action, state or rollup.OPEN, stop)
    return row, fact


def _agent_row(
    t: _Templates, host_id: str, hostname: str, detected: datetime, rnd: random.Random
) -> tuple[Any, ...]:
    event_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    kind = AGENT_TYPES[rnd.randrange(len(AGENT_TYPES))]
    data = t.agent_text(
        event_id=event_id, detected_at=detected, type=kind, host_id=host_id, hostname=hostname
    )
    received = detected + timedelta(seconds=5)
    return (host_id, event_id, "agent", received, detected, None, None, None, kind, data,
            None, None, None, None, None, None)  # fmt: skip


def _host_rows(
    host_ids: list[str], hostnames: list[str], now: datetime, rnd: random.Random
) -> Iterator[tuple[Any, ...]]:
    for i, (h, name) in enumerate(zip(host_ids, hostnames, strict=True)):
        seen = now - timedelta(seconds=rnd.choice((30, 60, 120, 900, 86400, 7 * 86400)))
        mode, reason, circuit = "enforce", None, "closed"
        pick = rnd.random()
        if pick < 0.01:
            mode, reason, circuit = "monitor", None, "open"  # the kill-rate circuit breaker
        elif pick < 0.02:
            mode, reason = "monitor", "break-glass until " + (now + timedelta(hours=4)).isoformat()
        elif pick < 0.25:
            mode, reason = "monitor", "policy mode is monitor"
        yield (
            h, f"m-{i}", name, f"{i:064x}", now - timedelta(days=60), seen, "0.1.0",
            rnd.choice((1, 2, 2, 2)), mode, reason, circuit, f'{{"scans": {100 + i % 50}}}', seen, seen,
        )  # fmt: skip


# --- the fast path into each database ---------------------------------------------------------


@contextmanager
def _bulk(engine: Engine) -> Iterator[Connection]:
    """One transaction; on SQLite without waiting for the disk (a crash mid-fill loses the fill only)."""
    with engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # outside any transaction (the driver connection runs in autocommit)
            raw.execute("PRAGMA synchronous = OFF")
            raw.execute("PRAGMA cache_size = -262144")
        try:
            with conn.begin():
                if not sqlite:
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                yield conn
        finally:
            if sqlite:
                raw.execute("PRAGMA synchronous = NORMAL")
                raw.execute("PRAGMA cache_size = -2000")


def _copy(conn: Connection, table: str, columns: Sequence[str], rows: Any) -> None:
    """Rows of Python values, JSON columns already as JSON text."""
    from server_stub.store import tables

    t = tables.metadata.tables[table]
    if conn.dialect.name == "postgresql":
        raw: Any = conn.connection.dbapi_connection  # psycopg 3
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    # SQLite: the column types' own bind processors (UTC times as text), then executemany.
    procs = [
        None
        if isinstance(t.c[c].type, sa.JSON)
        else t.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        for c in columns
    ]
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    params = [
        tuple(v if p is None or v is None else p(v) for p, v in zip(procs, row, strict=True)) for row in rows
    ]
    conn.exec_driver_sql(sql, params)


def _drop_indexes(conn: Connection) -> list[str]:
    """Drop the events table's secondary indexes (not constraints); returns their CREATE statements."""
    if conn.dialect.name == "postgresql":
        found = conn.exec_driver_sql(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = 'events'::regclass AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
        ).all()
    else:
        found = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL"
        ).all()
    for name, _ in found:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return [sql for _, sql in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulkfill", description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, help="sqlite:///PATH or postgresql://... (migrated first)")
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--violations", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    from server_stub.store import Store

    store = Store.open(args.db)
    try:
        filled = fill(
            store.engine, hosts=args.hosts, violations=args.violations, days=args.days, seed=args.seed,
            progress=lambda msg: print(f"  {msg}", flush=True),
        )  # fmt: skip
    finally:
        store.close()
    print(f"stored {filled.violations:,} violations, {filled.agent_events:,} agent events from "
          f"{len(filled.host_ids):,} hosts in {filled.seconds:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
