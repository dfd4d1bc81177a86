"""Enrolled hosts: identity (node key hash), last contact, last heartbeat."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles

from endpoint_agent.errors import StoreError
from endpoint_contract.heartbeat import Heartbeat
from server_stub.store.changes import HOST_KEY, record_change
from server_stub.store.coltypes import UTCDateTime
from server_stub.store.engine import db_errors, is_postgres, read_connection, utcnow
from server_stub.store.pgarrays import Column, texts, times
from server_stub.store.tables import hosts

_BATCH = 2000  # rows per statement of a write-behind flush
_IDENTITY = (hosts.c.host_id, hosts.c.machine_id, hosts.c.hostname, hosts.c.enrolled_at)  # NodeIdentity


# The write-behind statements on PostgreSQL (HostRepo._execute_arrays): the same updates as the
# portable ones in touch_many / heartbeat_many, with the rows given as arrays.
_PG_TOUCH = (
    "UPDATE hosts AS h SET last_seen = v.at FROM unnest(%b::text[], %b::timestamptz[]) AS v(host_id, at)"
    " WHERE h.host_id = v.host_id AND (h.last_seen IS NULL OR h.last_seen < v.at)"
)
_PG_HEARTBEAT = (
    "UPDATE hosts AS h SET agent_version = v.agent_version, policy_version = v.policy_version::bigint,"
    " mode = v.mode, last_scan_at = v.last_scan_at, counters = v.counters::json,"
    " circuit_state = v.circuit_state, mode_reason = v.mode_reason, heartbeat_at = v.at, last_seen = v.at"
    " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::text[],"
    " %b::text[], %b::text[], %b::timestamptz[]) AS v(host_id, agent_version, policy_version, mode,"
    " last_scan_at, counters, circuit_state, mode_reason, at) WHERE h.host_id = v.host_id"
)


ColumnsOf = Callable[[Sequence[Any]], tuple[Column, ...]]  # entries -> the statement's arrays


def _touch_columns(entries: Sequence[tuple[str, datetime]]) -> tuple[Column, ...]:
    return texts((host_id for host_id, _ in entries), distinct=True), times(at for _, at in entries)


def _heartbeat_columns(entries: Sequence[tuple[str, Heartbeat, datetime]]) -> tuple[Column, ...]:
    """The heartbeats as _PG_HEARTBEAT's columns (policy_version as text: a NULL-able bigint)."""
    beats = [beat for _, beat, _ in entries]
    return (
        texts((host_id for host_id, _, _ in entries), distinct=True),
        texts(beat.agent_version for beat in beats),
        texts(None if beat.policy_version is None else str(beat.policy_version) for beat in beats),
        texts(beat.mode for beat in beats),
        times(beat.last_scan_at for beat in beats),
        texts(json.dumps(dict(beat.counters)) for beat in beats),
        texts(beat.circuit_state for beat in beats),
        texts(beat.mode_reason for beat in beats),
        times(at for _, _, at in entries),
    )


class EnrollRefused(Exception):
    """A known machine id, enrolled again without its current node key or an admin's reset."""


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who a node key names: all a request's principal and the key cache hold. A host's contact
    times, heartbeat and counters are read with HostRepo.get, never from here."""

    host_id: str
    machine_id: str
    hostname: str
    enrolled_at: datetime


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


@dataclass(frozen=True, slots=True)
class HostFilter:
    """Which hosts a page of the host list holds (every given condition)."""

    silent_before: datetime | None = None  # stale: never seen, or last seen before this
    seen_since: datetime | None = None  # not stale: last seen at or after this
    mode: str | None = None
    policy_version: int | None = None
    hostname_prefix: str | None = None


# The greatest code point: in binary order every name that starts with a prefix sorts below
# prefix + this one.
_MAX_CHAR = "\U0010ffff"


def _host_conditions(flt: HostFilter, *, binary_order: bool) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = []
    if flt.silent_before is not None:
        conds.append(sa.or_(hosts.c.last_seen.is_(None), hosts.c.last_seen < flt.silent_before))
    if flt.seen_since is not None:
        conds.append(hosts.c.last_seen >= flt.seen_since)
    if flt.mode is not None:
        conds.append(hosts.c.mode == flt.mode)
    if flt.policy_version is not None:
        conds.append(hosts.c.policy_version == flt.policy_version)
    if flt.hostname_prefix:
        prefix = flt.hostname_prefix
        # Where the name index starts, and the exact test: a linguistic collation (PostgreSQL's
        # en_US, say) may sort names that only look alike between the prefix and any upper
        # bound, so the range is closed only where the order is binary (SQLite).
        conds += [hosts.c.hostname >= prefix, sa.func.substr(hosts.c.hostname, 1, len(prefix)) == prefix]
        if binary_order:
            conds.append(hosts.c.hostname < prefix + _MAX_CHAR)
    return conds


def _is_binary_collation(name: str) -> bool:
    # "C" and "POSIX" compare bytes, and so does C.UTF-8 (UTF-8 bytes sort as code points).
    return name in ("C", "POSIX") or name.upper() in ("C.UTF-8", "C.UTF8")


def host_page_query(
    flt: HostFilter, *, after: tuple[str, str] | None, limit: int, binary_order: bool
) -> sa.Select[Any]:
    """Hosts after (hostname, host_id) `after` in that order, read from ix_hosts_hostname (or the
    mode's or policy version's index, which continue in the same order). Rows of ListedHost's fields."""
    conds = _host_conditions(flt, binary_order=binary_order)
    if after is not None:
        conds.append(sa.tuple_(hosts.c.hostname, hosts.c.host_id) > sa.tuple_(*after))
    return sa.select(*_LISTED_COLUMNS).where(*conds).order_by(hosts.c.hostname, hosts.c.host_id).limit(limit)


# How the host list reads times: what SQLite stores (coltypes.UTCDateTime through SQLAlchemy's
# format); text of this form sorts as time. `utc_text` writes a column so, in either database.
UTC_TEXT_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class utc_text(sa.sql.expression.FunctionElement[str]):
    """A UTC time column as text in UTC_TEXT_FORMAT ('YYYY-MM-DD HH:MM:SS.ffffff')."""

    type = sa.String()
    inherit_cache = True


@compiles(utc_text, "sqlite")
def _utc_text_sqlite(element: utc_text, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(utc_text, "postgresql")
def _utc_text_postgresql(element: utc_text, compiler: Any, **kw: Any) -> str:
    return f"to_char(timezone('UTC', {compiler.process(element.clauses, **kw)}), 'YYYY-MM-DD HH24:MI:SS.US')"


class ListedHost(NamedTuple):
    """A host as the host list shows it, as the database gives it: times as utc_text (None when
    unset), counters as their stored JSON text."""

    host_id: str
    hostname: str
    machine_id: str
    enrolled_at: str
    last_seen: str | None
    agent_version: str | None
    policy_version: int | None
    mode: str | None
    last_scan_at: str | None
    heartbeat_at: str | None
    counters: str | None
    circuit_state: str | None


def _listed_column(name: str) -> sa.ColumnElement[Any]:
    column = hosts.c[name]
    if isinstance(column.type, UTCDateTime):
        return utc_text(column).label(name)
    if isinstance(column.type, sa.JSON):
        return sa.cast(column, sa.Text).label(name)
    return column


_LISTED_COLUMNS = tuple(_listed_column(f) for f in ListedHost._fields)


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


@dataclass(frozen=True, slots=True)
class Enrollment:
    """One enrollment, as HostRepo.enroll_many takes it."""

    machine_id: str
    hostname: str
    node_key_hash: str
    current_key_hash: str | None = None  # the key a known machine proves itself with


@dataclass(slots=True)
class _Bound:
    """A machine id's host as the enrollments decided so far leave it."""

    machine_id: str
    host_id: str
    hostname: str
    node_key_hash: str
    reenroll_open: bool
    new: bool = False  # to insert: a machine first enrolled here
    rotated: bool = False  # a known host whose key changed here


# Fixed statement text, sent to the driver as is: building, compiling and binding a statement per
# batch (and psycopg parsing a new text for every batch size) cost more CPU than the writes.
# Rows are locked (PostgreSQL) and inserted in machine id order, the same in every process, so two
# processes' batches wait for each other rather than deadlock (if they ever did, PostgreSQL ends
# one: a 503 its agents retry). SQLite: BEGIN IMMEDIATE already serializes them.
_KNOWN_COLUMNS = "machine_id, host_id, hostname, node_key_hash, reenroll_open"
_PG_KNOWN = (
    f"SELECT {_KNOWN_COLUMNS} FROM {hosts.name} WHERE machine_id = ANY(%(machines)b::text[]) "
    "ORDER BY machine_id FOR UPDATE"
)
_SQLITE_KNOWN = (
    f"SELECT {_KNOWN_COLUMNS} FROM {hosts.name} WHERE machine_id IN (SELECT value FROM json_each(?)) "
    "ORDER BY machine_id"
)
_NEW_COLUMNS = "host_id, machine_id, hostname, node_key_hash, enrolled_at, last_seen"
# A machine another process enrolled since the SELECT is left out (and decided again).
_PG_INSERT = (
    f"INSERT INTO {hosts.name} ({_NEW_COLUMNS}) "
    "SELECT u.h, u.m, u.n, u.k, %(now)s, %(now)s "
    "FROM unnest(%(h)b::text[], %(m)b::text[], %(n)b::text[], %(k)b::text[]) "
    "WITH ORDINALITY AS u(h, m, n, k, o) "
    "ORDER BY u.o ON CONFLICT (machine_id) DO NOTHING RETURNING machine_id"
)
_SQLITE_INSERT = f"INSERT INTO {hosts.name} ({_NEW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_REENROLL = (
    sa.update(hosts)
    .where(hosts.c.host_id == sa.bindparam("b_host"))
    .values(
        hostname=sa.bindparam("b_hostname"),
        node_key_hash=sa.bindparam("b_key"),
        last_seen=sa.bindparam("b_now", type_=UTCDateTime),
        reenroll_open=False,
    )
)


def _known(conn: Connection, machines: list[str]) -> dict[str, _Bound]:
    if is_postgres(conn):
        result = conn.exec_driver_sql(_PG_KNOWN, {"machines": machines})
    else:
        result = conn.exec_driver_sql(_SQLITE_KNOWN, (json.dumps(machines),))
    return {r[0]: _Bound(r[0], r[1], r[2], r[3], bool(r[4])) for r in result}


def _insert(conn: Connection, new: list[_Bound], now: datetime) -> set[str]:
    """Insert these hosts (in machine id order); the machine ids really inserted."""
    to_db = UTCDateTime().dialect_impl(conn.dialect).bind_processor(conn.dialect)
    at = to_db(now) if to_db is not None else now
    if is_postgres(conn):
        params = {
            "h": [b.host_id for b in new],
            "m": [b.machine_id for b in new],
            "n": [b.hostname for b in new],
            "k": [b.node_key_hash for b in new],
            "now": at,
        }
        return {r[0] for r in conn.exec_driver_sql(_PG_INSERT, params)}
    rows = [(b.host_id, b.machine_id, b.hostname, b.node_key_hash, at, at) for b in new]
    conn.exec_driver_sql(_SQLITE_INSERT, rows)  # a duplicate fails the batch: it cannot race here
    return {b.machine_id for b in new}


def _decide(bound: dict[str, _Bound], item: Enrollment) -> str | EnrollRefused:
    host = bound.get(item.machine_id)
    if host is None:
        host_id = str(uuid.uuid4())
        bound[item.machine_id] = _Bound(
            item.machine_id, host_id, item.hostname, item.node_key_hash, False, new=True
        )
        return host_id
    if not (host.reenroll_open or item.current_key_hash == host.node_key_hash):
        return EnrollRefused(item.machine_id)
    host.hostname, host.node_key_hash, host.reenroll_open = item.hostname, item.node_key_hash, False
    host.rotated = not host.new  # a key first given in this batch was never stored: nothing to forget
    return host.host_id


def _presumed_new(
    conn: Connection, items: Sequence[Enrollment], now: datetime, outcomes: list[str | EnrollRefused]
) -> list[int]:
    """PostgreSQL, a batch of distinct machines (none depends on another): each inserted as a first
    enrollment by ONE statement, without looking them up first (a fleet coming up is new machines);
    their outcomes set. Returns the indices of the machines known already, to be decided as known."""
    order = sorted(range(len(items)), key=lambda i: items[i].machine_id)
    new = [
        _Bound(
            items[i].machine_id, str(uuid.uuid4()), items[i].hostname, items[i].node_key_hash, False, new=True
        )
        for i in order
    ]
    inserted = _insert(conn, new, now)
    known = []
    for i, host in zip(order, new, strict=True):
        if host.machine_id in inserted:
            outcomes[i] = host.host_id
        else:
            known.append(i)
    return sorted(known)


def _enroll_in(
    conn: Connection, items: Sequence[Enrollment], now: datetime
) -> tuple[list[str | EnrollRefused], list[str]]:
    """HostRepo.enroll_many inside the caller's transaction: the outcomes, and the rotated hosts."""
    outcomes: list[str | EnrollRefused] = [EnrollRefused("")] * len(items)
    todo = list(range(len(items)))
    if is_postgres(conn) and len({item.machine_id for item in items}) == len(items):
        todo = _presumed_new(conn, items, now, outcomes)
    rotated: list[str] = []
    for round_ in range(4):  # again only for machines another process enrolled meanwhile
        if not todo:
            break
        if round_ == 3:
            raise StoreError(
                "database error while enrolling hosts: a machine id kept being enrolled elsewhere"
            )
        bound = _known(conn, sorted({items[i].machine_id for i in todo}))
        for i in todo:
            outcomes[i] = _decide(bound, items[i])
        new = sorted((b for b in bound.values() if b.new), key=lambda b: b.machine_id)
        raced = {b.machine_id for b in new} - _insert(conn, new, now) if new else set()
        changed = [b for b in bound.values() if b.rotated]
        if changed:
            conn.execute(
                _REENROLL,
                [
                    {"b_host": b.host_id, "b_hostname": b.hostname, "b_key": b.node_key_hash, "b_now": now}
                    for b in changed
                ],
            )
            rotated += [b.host_id for b in changed]
        todo = [i for i in todo if items[i].machine_id in raced]
    for host_id in rotated:
        record_change(conn, HOST_KEY, host_id, now)  # last: the old keys stop working everywhere
    return outcomes, rotated


class HostRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Called with a host id after its node key changed (commit done): this process forgets it now.
        self.on_key_change: list[Callable[[str], None]] = []
        # Called before a listing reads the table: the contact times and heartbeats this process
        # holds for a batched write land first, so what it was told it also shows (writebehind.py).
        self.before_read: list[Callable[[], None]] = []
        self._binary: bool | None = None

    def _binary_order(self, conn: Any) -> bool:
        """Whether names sort by code point here: SQLite, or a PostgreSQL database whose collation
        is C (C.UTF-8 included); read once. A name prefix is then one closed range of the index."""
        if self._binary is None:
            if conn.dialect.name != "postgresql":
                self._binary = True
            else:
                # The provider column exists from PostgreSQL 15 on ('i': ICU, never binary here).
                collation, provider = conn.execute(
                    sa.text(
                        "SELECT datcollate, to_jsonb(d) ->> 'datlocprovider' FROM pg_database d"
                        " WHERE datname = current_database()"
                    )
                ).one()
                self._binary = provider in (None, "c") and _is_binary_collation(str(collation))
        return self._binary

    def settle(self) -> None:
        for flush in self.before_read:
            flush()

    def _key_changed(self, host_id: str) -> None:
        for listener in self.on_key_change:
            listener(host_id)

    def enroll(
        self,
        *,
        machine_id: str,
        hostname: str,
        node_key_hash: str,
        now: datetime,
        current_key_hash: str | None = None,
    ) -> str:
        """The host id for `machine_id`, now holding this node key.

        The first enrollment binds the machine id. A known one is enrolled again (its key rotated,
        its history kept) only with its current node key, or once after an admin's `reset`;
        anything else raises EnrollRefused: a shared secret cannot take over a host.
        """
        (outcome,) = self.enroll_many(
            [Enrollment(machine_id, hostname, node_key_hash, current_key_hash)], now
        )
        if isinstance(outcome, EnrollRefused):
            raise outcome
        return outcome

    def enroll_many(self, items: Sequence[Enrollment], now: datetime) -> list[str | EnrollRefused]:
        """Each enrollment decided as `enroll` decides it, in order, and all written in ONE transaction.

        Outcomes in the order of `items`: the host id, or EnrollRefused. A later item sees the
        earlier ones (a machine enrolled twice here: the second needs the first's key). A database
        failure raises StoreError and stores none of them.
        """
        with db_errors("enrolling hosts"), self._engine.begin() as conn:
            outcomes, rotated = _enroll_in(conn, items, now)
        for host_id in rotated:
            self._key_changed(host_id)
        return outcomes

    def reset(self, host: str, now: datetime | None = None) -> HostRecord | None:
        """Open a host (by id or name) for one new enrollment; its node key stops working now."""
        with db_errors("resetting a host"), self._engine.begin() as conn:
            row = conn.execute(
                sa.select(hosts).where(sa.or_(hosts.c.host_id == host, hosts.c.hostname == host)).limit(1)
            ).first()
            if row is None:
                return None
            unusable = hashlib.sha256(secrets.token_bytes(32)).hexdigest()  # no key hashes to it
            conn.execute(
                sa.update(hosts)
                .where(hosts.c.host_id == row.host_id)
                .values(node_key_hash=unusable, reenroll_open=True)
            )
            record_change(conn, HOST_KEY, row.host_id, now or utcnow())
        self._key_changed(row.host_id)
        return _record(row)

    def by_key(self, node_key_hash: str) -> NodeIdentity | None:
        """Who owns this key; None for an unknown (or rotated) key. A read, never a write."""
        query = sa.select(*_IDENTITY).where(hosts.c.node_key_hash == node_key_hash)
        with db_errors("looking up a node key"), read_connection(self._engine) as conn:
            row = conn.execute(query).first()
        return NodeIdentity(*row) if row is not None else None

    def keyed(self, limit: int) -> list[tuple[str, NodeIdentity]]:
        """(node key digest, host) of at most `limit` hosts, the latest seen first: to warm a key
        cache at start (server_stub/keycache.py), so a restarted server's first polls need no query.

        Identities only: a whole record per host cost 4 s of CPU at 100,000 hosts, beside the
        first requests."""
        query = (
            sa.select(hosts.c.node_key_hash, *_IDENTITY)
            .order_by(hosts.c.last_seen.desc().nulls_last())
            .limit(limit)
        )
        with db_errors("reading node keys"), read_connection(self._engine) as conn:
            rows = conn.execute(query).all()  # fetched whole: a row at a time costs more than the query
        return [(key, NodeIdentity(*identity)) for key, *identity in rows]

    def touch_many(self, seen: Mapping[str, datetime]) -> None:
        """Hosts last seen at these times, in batched statements; `last_seen` never moves back."""
        at = sa.bindparam("b_seen", type_=UTCDateTime)
        stmt = (
            sa.update(hosts)
            .where(
                hosts.c.host_id == sa.bindparam("b_host"),
                sa.or_(hosts.c.last_seen.is_(None), hosts.c.last_seen < at),
            )
            .values(last_seen=at)
        )
        if self._engine.dialect.name == "postgresql":  # one statement of arrays per batch
            ordered = sorted(seen.items())  # rows locked in one order by every process
            self._execute_arrays("recording hosts as seen", _PG_TOUCH, ordered, _touch_columns)
            return
        rows = [{"b_host": host_id, "b_seen": at} for host_id, at in seen.items()]
        self._execute_batches("recording hosts as seen", stmt, rows)

    def heartbeat_many(self, beats: Sequence[tuple[str, Heartbeat, datetime]]) -> None:
        """Store heartbeats (host id, content, received at), in batched statements."""
        if self._engine.dialect.name == "postgresql":
            ordered = sorted(beats, key=lambda entry: entry[0])
            self._execute_arrays("recording heartbeats", _PG_HEARTBEAT, ordered, _heartbeat_columns)
            return
        stmt = (
            sa.update(hosts)
            .where(hosts.c.host_id == sa.bindparam("b_host"))
            .values(
                agent_version=sa.bindparam("b_agent_version"),
                policy_version=sa.bindparam("b_policy_version"),
                mode=sa.bindparam("b_mode"),
                last_scan_at=sa.bindparam("b_last_scan_at", type_=UTCDateTime),
                counters=sa.bindparam("b_counters", type_=sa.JSON),
                circuit_state=sa.bindparam("b_circuit_state"),
                mode_reason=sa.bindparam("b_mode_reason"),
                heartbeat_at=sa.bindparam("b_at", type_=UTCDateTime),
                last_seen=sa.bindparam("b_at", type_=UTCDateTime),
            )
        )
        rows = [
            {
                "b_host": host_id,
                "b_agent_version": beat.agent_version,
                "b_policy_version": beat.policy_version,
                "b_mode": beat.mode,
                "b_last_scan_at": beat.last_scan_at,
                "b_counters": dict(beat.counters),
                "b_circuit_state": beat.circuit_state,
                "b_mode_reason": beat.mode_reason,
                "b_at": at,
            }
            for host_id, beat, at in beats
        ]
        self._execute_batches("recording heartbeats", stmt, rows)

    def heartbeat(self, host_id: str, beat: Heartbeat, now: datetime) -> None:
        self.heartbeat_many([(host_id, beat, now)])

    def _execute_arrays(self, what: str, sql: str, entries: Sequence[Any], columns: ColumnsOf) -> None:
        """PostgreSQL: each batch as ONE statement over arrays (one per column, unnest): a flush of
        thousands of hosts is a few statements, not thousands of executions, each of whose
        parameters the driver and SQLAlchemy would prepare one by one in Python; each array
        built in one pass (store/pgarrays.py), not dumped value by value."""
        for start in range(0, len(entries), _BATCH):
            arrays = columns(entries[start : start + _BATCH])
            with db_errors(what), self._engine.begin() as conn:
                conn.exec_driver_sql(sql, arrays)

    def _execute_batches(self, what: str, stmt: Any, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _BATCH):
            with db_errors(what), self._engine.begin() as conn:
                conn.execute(stmt, rows[start : start + _BATCH])

    def get(self, host: str) -> HostRecord | None:
        """One host by id or hostname."""
        self.settle()
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
        self.settle()
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

    def listing(
        self, flt: HostFilter, *, after: tuple[str, str] | None, limit: int
    ) -> tuple[list[ListedHost], bool]:
        """Up to `limit` hosts after (hostname, host_id) `after`, in that order; and whether more follow.

        Keyset order: a host enrolled while someone pages shows up on a later page or not at all,
        and never moves a host already listed onto another page. Rows as the host list writes them
        out (ListedHost: times and counters as text): a page of a thousand hosts spent most of its
        time making datetimes and dicts only to turn them back into text.
        """
        self.settle()
        with db_errors("listing hosts"), read_connection(self._engine) as conn:
            query = host_page_query(flt, after=after, limit=limit + 1, binary_order=self._binary_order(conn))
            rows = conn.execute(query).all()
        return [ListedHost(*r) for r in rows[:limit]], len(rows) > limit

    def list_hosts(self) -> list[HostRecord]:
        self.settle()
        with db_errors("listing hosts"), read_connection(self._engine) as conn:
            rows = conn.execute(sa.select(hosts).order_by(hosts.c.hostname, hosts.c.host_id)).all()
        return [_record(r) for r in rows]
