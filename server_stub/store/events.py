"""Violations and agent events: idempotent batch insert, filtered cursor pages, summary counts."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles

from endpoint_agent.errors import StoreError
from endpoint_contract.events import AgentEvent, Violation
from server_stub.batch import Received
from server_stub.store import rollup
from server_stub.store.bulk import bulk_insert, bulk_insert_hosts, hosts_insert
from server_stub.store.coltypes import UTCDateTime
from server_stub.store.engine import db_errors, is_postgres, read_connection, serialize_writers
from server_stub.store.tables import events, hosts

VIOLATION = "violation"
AGENT = "agent"

# Triage states an analyst can set, and the two filter values that are not states.
TRIAGE_STATES = ("acknowledged", "false_positive", "escalated")
OPEN = "open"
TRIAGED = "triaged"
TRIAGE_FILTERS = (OPEN, TRIAGED, *TRIAGE_STATES)


@dataclass(slots=True)
class EventInsert:
    """One row to insert: the event as the contract defines it (`data`: its JSON object, as text or
    decoded) and the columns to filter on. (Not frozen: one is built per uploaded event, and a
    frozen dataclass takes twice as long to build.)"""

    event_id: str
    kind: str
    detected_at: datetime
    data: dict[str, Any] | str
    rule_id: str | None = None
    category: str | None = None
    action: str | None = None
    type: str | None = None
    first_seen: datetime | None = None
    severity: str | None = None


@dataclass(slots=True)
class Upload:
    """One node's upload: its rows, as `EventRepo.insert_batch` takes them."""

    host_id: str
    rows: Sequence[EventInsert]


def event_insert(ev: Violation | AgentEvent, host_id: str, hostname: str | None = None) -> EventInsert:
    """The row of an uploaded event (endpoint_contract/events.py), with the host's identity as the
    server knows it (`host_id`, and `hostname` when given): what a body claims is replaced."""
    data = ev.to_json()
    data["host_id"] = host_id
    if hostname is not None:
        data["hostname"] = hostname
    return _row(ev, data)


def received_rows(
    received: Sequence[Received], host_id: str, hostname: str | None = None
) -> list[EventInsert]:
    """The rows of a batch as uploaded: each event's JSON text as validated (server_stub/batch.py),
    with the host's identity as the server knows it -- what `event_insert` stores, without re-encoding."""
    with_id = _members({"host_id": host_id})
    with_both = _members({"host_id": host_id, "hostname": hostname}) if hostname is not None else with_id
    rows = []
    for r in received:
        ev, text = r.event, r.text
        given = ev.model_fields_set
        if "host_id" in given or (
            hostname is not None and "hostname" in given and getattr(ev, "hostname", None) != hostname
        ):
            # A body that names a host (another one, or a stale name): its claims replaced (decoded: rare).
            data = json.loads(text)
            data["host_id"] = host_id
            if hostname is not None:
                data["hostname"] = hostname
            rows.append(_row(ev, data))
            continue
        keys = with_id if "hostname" in given else with_both
        # The text is one JSON object (validated): the server's keys go before its closing brace.
        rows.append(_row(ev, f"{text.rstrip()[:-1]},{keys}}}"))
    return rows


def _members(values: dict[str, Any]) -> str:
    """`"k":v,...`: JSON object members to add to an object's text."""
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))[1:-1]


def _row(ev: Violation | AgentEvent, data: dict[str, Any] | str) -> EventInsert:
    if isinstance(ev, AgentEvent):
        return EventInsert(ev.event_id, AGENT, ev.detected_at, data, type=ev.type)
    # Positional, and str() of the StrEnums (their value): the cheapest build of a row per event.
    return EventInsert(
        ev.event_id, VIOLATION, ev.detected_at, data, ev.rule_id, ev.category, str(ev.action), None,
        ev.first_seen, str(ev.severity),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventFilter:
    since: datetime | None = None
    until: datetime | None = None
    host: str | None = None  # host id or hostname
    rule_id: str | None = None
    category: str | None = None
    action: str | None = None
    severity: str | None = None
    type: str | None = None
    triage: str | None = None  # a triage state, OPEN (untriaged) or TRIAGED (any state)
    host_ids: tuple[str, ...] | None = None  # `host` resolved (resolve_host): filtered by equality


@dataclass(frozen=True, slots=True)
class Triage:
    state: str
    note: str
    by: str
    at: datetime


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    host_id: str
    hostname: str
    received_at: datetime
    data: dict[str, Any]
    triage: Triage | None = None


def _named(host: str) -> sa.CompoundSelect:
    # Two indexed lookups (primary key, ix_hosts_hostname), not one OR that scans every host.
    return sa.union(
        sa.select(hosts.c.host_id).where(hosts.c.host_id == host),
        sa.select(hosts.c.host_id).where(hosts.c.hostname == host),
    )


def resolve_host(conn: Connection, flt: EventFilter) -> EventFilter:
    """`flt` with its host (an id or a hostname) resolved to the matching host ids, so the events
    are then filtered by equality on host_id and read from an index that starts with it."""
    if flt.host is None or flt.host_ids is not None:
        return flt
    ids = conn.execute(_named(flt.host)).scalars().all()
    return replace(flt, host_ids=tuple(sorted(ids)))


def _opaque(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    # The same value (NULL stays NULL) in an expression no index serves.
    return column.concat("")


def conditions(kind: str, flt: EventFilter, *, time_first: bool = False) -> list[sa.ColumnElement[bool]]:
    """The WHERE of a filter. `time_first`: only the time, host and rule conditions may be read
    from an index (page_query's time-range plan); the others are checked on the rows found."""
    conds: list[sa.ColumnElement[bool]] = [events.c.kind == kind]
    if flt.since is not None:
        conds.append(events.c.detected_at >= flt.since)
    if flt.until is not None:
        conds.append(events.c.detected_at < flt.until)
    if flt.host_ids is not None:
        if not flt.host_ids:
            conds.append(sa.false())
        elif len(flt.host_ids) == 1:
            conds.append(events.c.host_id == flt.host_ids[0])
        else:
            conds.append(events.c.host_id.in_(flt.host_ids))
    elif flt.host is not None:
        # Unresolved (see resolve_host): a subquery, not a join, so aggregates over many events
        # never touch the hosts table.
        conds.append(events.c.host_id.in_(_named(flt.host)))
    if flt.rule_id is not None:
        conds.append(events.c.rule_id == flt.rule_id)
    for column, value in (
        (events.c.category, flt.category),
        (events.c.action, flt.action),
        (events.c.severity, flt.severity),
        (events.c.type, flt.type),
    ):
        if value is not None:
            conds.append((_opaque(column) if time_first else column) == value)
    triage: sa.ColumnElement[Any] = _opaque(events.c.triage_state) if time_first else events.c.triage_state
    if flt.triage == OPEN:
        conds.append(triage.is_(None))
    elif flt.triage == TRIAGED:
        conds.append(triage.is_not(None))
    elif flt.triage is not None:
        conds.append(triage == flt.triage)
    return conds


class detected_day(sa.sql.expression.FunctionElement[date]):
    """The UTC day an event was detected: the expression ix_events_kind_day_id is built on
    (migration 14), spelled exactly as there so each database serves it from that index."""

    type = sa.Date()
    inherit_cache = True


@compiles(detected_day, "sqlite")
def _detected_day_sqlite(element: detected_day, compiler: Any, **kw: Any) -> str:
    # Stored as 'YYYY-MM-DD HH:MM:SS...' in UTC (coltypes.UTCDateTime).
    return f"substr({compiler.process(events.c.detected_at, **kw)}, 1, 10)"


@compiles(detected_day, "postgresql")
def _detected_day_postgresql(element: detected_day, compiler: Any, **kw: Any) -> str:
    return f"CAST(timezone('UTC', {compiler.process(events.c.detected_at, **kw)}) AS DATE)"


# The most days a period's id window is found for, a seek per day (beyond it, the time range).
MAX_DAYS = 62


def page_query(
    kind: str,
    flt: EventFilter,
    *,
    limit: int,
    after_id: int = 0,
    before_id: int | None = None,
    newest_first: bool = False,
    walk_ids: bool = True,
) -> sa.Select[Any]:
    """Events between the cursors in receive order (or newest first).

    `walk_ids`: each filter's (column, kind, id) index walked from the cursor, stopping after
    `limit` rows (with a period, plan() narrows the cursors to its id window). Else (see plan())
    the ids are found through the time range, in a subquery of the events table alone, ordered
    by `id + 0` (which no index serves) and with only the host, rule and time conditions
    indexable, so each database reads the range from a (..., detected_at) index, keeps the first
    `limit` ids and fetches just those.
    """
    conds = conditions(kind, flt, time_first=not walk_ids)
    conds.append(events.c.id > after_id)
    if before_id is not None:
        conds.append(events.c.id < before_id)
    order: Any = events.c.id.desc() if newest_first else events.c.id
    query = sa.select(*_EVENT_COLUMNS).select_from(events.join(hosts, events.c.host_id == hosts.c.host_id))
    if walk_ids:
        return query.where(*conds).order_by(order).limit(limit)
    unordered = (events.c.id + 0).desc() if newest_first else events.c.id + 0
    found = sa.select(events.c.id).where(*conds).order_by(unordered).limit(limit)
    return query.where(events.c.id.in_(found)).order_by(order)


# A row walked in id order costs a table read for its time; a row of a time range is an index entry.
WALK_COST = 3


@dataclass(frozen=True, slots=True)
class Plan:
    """How page_query finds a page (see there); an id walk only between `first_id` and `last_id`
    (the period's id window: see id_window_query); `empty`: no event in the period at all."""

    walk_ids: bool = True
    first_id: int | None = None
    last_id: int | None = None
    empty: bool = False

    def cursors(self, after_id: int, before_id: int | None) -> tuple[int, int | None]:
        """The page's cursors narrowed to the window: the same events, fewer to walk past."""
        if self.first_id is not None:
            after_id = max(after_id, self.first_id - 1)
        if self.last_id is not None:
            before_id = self.last_id + 1 if before_id is None else min(before_id, self.last_id + 1)
        return after_id, before_id


def _day_seeks(dialect: str, last: bool) -> sa.ScalarSelect[Any]:
    """The least first id (or greatest last id) of the events of :kind over the whole days
    :days: one seek of ix_events_kind_day_id per day. The days are one parameter (a date array,
    or a JSON list on SQLite), so the statement's text -- and the database's plan of it -- is the
    same whatever the period's length."""
    listed: sa.TableValuedAlias
    if dialect == "postgresql":
        dates: sa.BindParameter[Any] = sa.bindparam("days", type_=ARRAY(sa.Date))
        listed = sa.func.unnest(dates).table_valued("value").render_derived()
    else:
        texts: sa.BindParameter[Any] = sa.bindparam("days", type_=sa.String)
        listed = sa.func.json_each(texts).table_valued("value")
    order = events.c.id.desc() if last else events.c.id
    seek = (
        sa.select(events.c.id)
        .where(events.c.kind == sa.bindparam("kind"), detected_day() == listed.c.value)
        .order_by(order)
        .limit(1)
        .correlate(listed)
        .scalar_subquery()
    )
    return sa.select((sa.func.max if last else sa.func.min)(seek)).select_from(listed).scalar_subquery()


def _reads_inside(day: date, lo: datetime | None, hi: datetime | None, last: bool) -> bool:
    """Whether the part of `day` from `lo` to before `hi` (either may be open) is cheaper read
    from the time index than the day walked in id order from its start (or end, for the last id)
    past the events outside it, when ids follow detection time."""
    midnight = datetime.combine(day, datetime.min.time(), UTC)
    start, stop = lo or midnight, hi or midnight + timedelta(days=1)
    if last:
        walked = midnight + timedelta(days=1) - hi if hi is not None else timedelta(0)
    else:
        walked = lo - midnight if lo is not None else timedelta(0)
    return stop - start < walked


def _part_of_day(i: int, lo: bool, hi: bool, inside: bool, last: bool) -> sa.ScalarSelect[Any]:
    """The first id (or last id) of the events of :kind detected on the end day :day<i>, from
    :lo<i> and before :hi<i> where given: the part inside (:start<i> to :stop<i>) read from the
    time index, or the day walked in id order (see _reads_inside)."""
    if inside:
        # `id + 0`: the range read and its ids compared; no walk in id order hoping to meet the
        # range early (a planner's guess that may read most of the table).
        ids = events.c.id + 0
        conds = [
            events.c.kind == sa.bindparam("kind"),
            events.c.detected_at >= sa.bindparam(f"start{i}"),
            events.c.detected_at < sa.bindparam(f"stop{i}"),
        ]
        return sa.select((sa.func.max if last else sa.func.min)(ids)).where(*conds).scalar_subquery()
    order = events.c.id.desc() if last else events.c.id
    conds = [events.c.kind == sa.bindparam("kind"), detected_day() == sa.bindparam(f"day{i}", type_=sa.Date)]
    if lo:
        conds.append(events.c.detected_at >= sa.bindparam(f"lo{i}"))
    if hi:
        conds.append(events.c.detected_at < sa.bindparam(f"hi{i}"))
    return sa.select(events.c.id).where(*conds).order_by(order).limit(1).scalar_subquery()


# An end day of the window: (from `since`, to `until`, read inside for the first id, for the last).
_End = tuple[bool, bool, bool, bool]


@functools.lru_cache(maxsize=64)
def _window_statement(dialect: str, ends: tuple[_End, ...], whole: bool, until: bool) -> sa.Select[Any]:
    """The id window's statement for its shape; its values are parameters (id_window_query)."""

    def bound(last: bool) -> sa.ColumnElement[Any]:
        parts = [
            _part_of_day(i, lo, hi, inside_last if last else inside_first, last)
            for i, (lo, hi, inside_first, inside_last) in enumerate(ends)
        ]
        if whole:
            parts.append(_day_seeks(dialect, last))
        if len(parts) == 1:
            return parts[0]
        union = sa.union_all(*[sa.select(p.label("x")) for p in parts]).subquery()
        return sa.select((sa.func.max if last else sa.func.min)(union.c.x)).scalar_subquery()

    return sa.select(bound(False), bound(True) if until else sa.null())


def id_window_query(
    kind: str, flt: EventFilter, days: Sequence[date], dialect: str
) -> tuple[sa.Select[Any], dict[str, Any]]:
    """(statement, parameters) finding (first id, last id) of the events of `kind` detected in the
    filter's period (last id only with `until`), exactly: each whole day of the period is a seek
    of ix_events_kind_day_id, its first and last day (where `since` and `until` fall) are read in
    part (_part_of_day). The statement depends only on the window's shape, so it is built once
    for each (building and executing a new one cost three times the CPU of executing it).

    `days` must hold every day an event of the period can be on (plan() lists them): then no
    event of the period lies outside the window, whatever its other conditions."""
    params: dict[str, Any] = {"kind": kind}
    ends: list[_End] = []
    whole = list(days)
    for day in sorted({days[0], days[-1]}):
        lo = flt.since if flt.since is not None and day == days[0] else None
        hi = flt.until if flt.until is not None and day == days[-1] else None
        if lo is None and hi is None:
            continue
        whole.remove(day)
        i = len(ends)
        ends.append(
            (
                lo is not None,
                hi is not None,
                _reads_inside(day, lo, hi, False),
                _reads_inside(day, lo, hi, True),
            )
        )
        midnight = datetime.combine(day, datetime.min.time(), UTC)
        params.update({f"day{i}": day, f"lo{i}": lo, f"hi{i}": hi, f"start{i}": lo or midnight,
                       f"stop{i}": hi or midnight + timedelta(days=1)})  # fmt: skip
    if whole:
        params["days"] = whole if dialect == "postgresql" else json.dumps([d.isoformat() for d in whole])
    return _window_statement(dialect, tuple(ends), bool(whole), flt.until is not None), params


@functools.lru_cache(maxsize=8)
def span_query(kind: str, dialect: str) -> sa.Select[Any] | sa.TextualSelect:
    """The first and last detection time stored for `kind` (two index seeks). Built once: the
    same statement object each time costs SQLAlchemy half as much to execute."""
    if dialect == "sqlite":
        # Named: SQLite may otherwise sort every event of the kind from ix_events_kind_day_id (as
        # covering, and preferred where it alone has no statistics): seconds at 1 M. (SQLAlchemy
        # writes no index hints for SQLite.)
        first = "SELECT detected_at FROM events INDEXED BY ix_events_console WHERE kind = :kind"
        return (
            sa.text(
                f"SELECT ({first} ORDER BY detected_at LIMIT 1), ({first} ORDER BY detected_at DESC LIMIT 1)"
            )
            .bindparams(kind=kind)
            .columns(sa.column("lo", UTCDateTime), sa.column("hi", UTCDateTime))
        )
    first_q = sa.select(events.c.detected_at).where(events.c.kind == kind)
    return sa.select(
        first_q.order_by(events.c.detected_at).limit(1).scalar_subquery(),
        first_q.order_by(events.c.detected_at.desc()).limit(1).scalar_subquery(),
    )


def plan(conn: Connection, kind: str, flt: EventFilter, *, newest_first: bool = False) -> Plan:
    """The cheapest exact plan for a page of this filter.

    Ids follow arrival, hence roughly detection time, so a walk in id order reaches a recent
    period only after every event before it (and newest first, an old period after every event
    since), unless it starts from the period's id window: its first id (and last, with an end),
    found from the day index (id_window_query; exact, late uploads and clocks running ahead
    included). That serves a period alone or with a host, rule, category, action, severity,
    triage or type: their (column, kind, id) indexes, or ix_events_kind_id, walked inside the
    window. A period of more than MAX_DAYS days is read by time from ix_events_console, unless a
    walk from the cursor is cheaper (with a host or rule: always walked). Which is cheaper is
    estimated from the time span the events cover (two index seeks), assuming an even rate; the
    answer never changes which events match, only the plan that finds them. Without the hint a
    planner picks the id walk ("stops after `limit` rows"), seconds at a million rows for the last
    day: `id + 0` is what takes the id index away from it.
    """
    if flt.since is None and flt.until is None:
        return Plan()
    lo, hi = conn.execute(span_query(kind, conn.dialect.name)).one()
    if lo is None or hi is None or hi <= lo:
        return Plan()
    since = min(max(flt.since or lo, lo), hi)
    until = max(min(flt.until or hi, hi), since)
    inside = (until - since).total_seconds()
    skipped = (hi - until if newest_first else since - lo).total_seconds()
    walk = skipped * WALK_COST <= inside
    # Every stored event was detected in [lo, hi] (this snapshot: see _snapshot), so the days of
    # the filter's period within it are all the days a matching event can be on.
    first = max(flt.since or lo, lo).astimezone(UTC).date()
    last_at = min(flt.until - timedelta(microseconds=1), hi) if flt.until is not None else hi
    last = last_at.astimezone(UTC).date()
    n = (last - first).days + 1
    # A host's or a rule's events are found in their own (column, kind, id) index, in order: walked.
    timed = flt.host_ids is not None or flt.host is not None or flt.rule_id is not None
    if n > MAX_DAYS or (timed and walk):
        return Plan(walk_ids=walk or timed)
    if n <= 0:
        return Plan(walk_ids=False, empty=True)
    days = [first + timedelta(days=i) for i in range(n)]
    window, params = id_window_query(kind, flt, days, conn.dialect.name)
    first_id, last_id = conn.execute(window, params).one()
    if first_id is None or (flt.until is not None and last_id is None):
        return Plan(walk_ids=False, empty=True)  # no event in the period
    return Plan(first_id=first_id, last_id=last_id)


def walk_ids(conn: Connection, kind: str, flt: EventFilter, *, newest_first: bool = False) -> bool:
    """Whether a page of this filter walks ids in order (from the cursor, or inside the period's
    id window) rather than reading the time range and sorting it (see plan())."""
    return plan(conn, kind, flt, newest_first=newest_first).walk_ids


def _snapshot(conn: Connection) -> None:
    """The plan's look at the data and the page it reads see the same rows: one snapshot
    (PostgreSQL's REPEATABLE READ; a SQLite read transaction is one already)."""
    if is_postgres(conn):
        conn.execution_options(isolation_level="REPEATABLE READ")


def _triage(row: Any) -> Triage | None:
    if row.triage_state is None:
        return None
    return Triage(
        state=row.triage_state, note=row.triage_note or "", by=row.triage_by or "", at=row.triage_at
    )


class EventRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def insert_batch(self, host_id: str, batch: Sequence[EventInsert], now: datetime) -> list[EventInsert]:
        """Store every event not stored yet for this host, in one transaction (all or nothing).

        Returns the events stored now (the first copy of each id); ids stored before are skipped.
        """
        unique: dict[str, EventInsert] = {}
        for ev in batch:
            unique.setdefault(ev.event_id, ev)
        if not unique:
            return []
        rows = list(unique.values())
        if self._engine.dialect.name == "postgresql":
            outcome = self._insert_group([Upload(host_id, rows)], now)[0]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        with db_errors("storing events"), self._engine.begin() as conn:
            # Two uploads of one host at once (a retry through another replica) may carry the same
            # ids in another order: one waits for the other (and for its rollup rows).
            # A retried upload carries ids already stored: skip them (first copy wins).
            rollup.lock_hosts(conn, (host_id,))
            inserted = bulk_insert(conn, host_id, rows, now)
            stored = [ev for ev in rows if ev.event_id in inserted]
            rollup.apply(conn, [_fact(host_id, ev) for ev in stored if ev.kind == VIOLATION], +1)
        return stored

    def insert_uploads(
        self, uploads: Sequence[Upload], now: datetime, held: Connection | None = None
    ) -> list[list[EventInsert] | StoreError]:
        """Several uploads at once (group commit, server_stub/ingestgroup.py): for each, in order,
        what `insert_batch` returns for it, or the StoreError it raises.

        PostgreSQL: one transaction and one statement for the whole group, as if the uploads had
        been stored one after the other in this order (an event id that two uploads of one host
        carry is new for the first only). Should the group fail, each upload is stored again on
        its own, so an upload the database refuses fails alone. SQLite: one upload after the other.

        `held` (PostgreSQL): a connection the caller keeps for its groups (no pool checkout and
        ping per group), the group's transaction sent in two round trips (`_pipelined`). Should
        the group fail, it is invalidated (the next use reconnects) and the uploads are stored
        again one by one on pooled connections.
        """
        if self._engine.dialect.name == "postgresql":
            try:
                return self._insert_group(uploads, now, held)
            except StoreError:
                if held is not None:  # may be broken: the next group gets a new one from the pool
                    held.invalidate()
                elif len(uploads) == 1:
                    raise
        out: list[list[EventInsert] | StoreError] = []
        for upload in uploads:
            try:
                out.append(self.insert_batch(upload.host_id, upload.rows, now))
            except StoreError as exc:
                out.append(exc)
        return out

    def _insert_group(
        self, uploads: Sequence[Upload], now: datetime, held: Connection | None = None
    ) -> list[list[EventInsert] | StoreError]:
        """PostgreSQL: the uploads in one transaction: every host's lock and hosts row first (sorted
        order, one statement), then one statement inserting the rows and counting the new violations
        in the rollups (server_stub/store/rollup.py counting_ctes: rollup keys upserted in key order)
        -- counted here, when all of them are new; else (a retry) the ones stored, after it."""
        uploading = {u.host_id for u in uploads if u.rows}
        if not uploading:
            return [[] for _ in uploads]
        first: dict[tuple[str, str], int] = {}  # (host, event id) -> the upload that carries it first
        host_ids: list[str] = []
        rows: list[EventInsert] = []

        def gather(known: set[str]) -> None:
            first.clear()
            host_ids.clear()
            rows.clear()
            for n, upload in enumerate(uploads):
                if upload.host_id not in known:
                    continue
                for ev in upload.rows:
                    key = (upload.host_id, ev.event_id)
                    if key not in first:
                        first[key] = n
                        host_ids.append(upload.host_id)
                        rows.append(ev)

        inserted: set[tuple[str, str]] | None = None
        known = uploading
        if held is not None:
            gather(known)  # every host is known, nearly always: checked in the same round trip
            inserted = _pipelined(held, uploading, host_ids, rows, now)
        if inserted is None:
            with db_errors("storing events"), _transaction(self._engine, held) as conn:
                # The host checked once, not per row; a retry through another replica waits for this.
                known = rollup.lock_uploaders(conn, uploading)
                gather(known)
                # Ids stored before are skipped (first copy wins); the rollups in the same statement.
                inserted = set()
                if rows:
                    inserted = bulk_insert_hosts(
                        conn, host_ids, rows, now, with_inserted=rollup.COUNT_NEW,
                        with_params=rollup.new_counts(host_ids, rows),
                    )  # fmt: skip
                    _count_some(conn, host_ids, rows, inserted)
        stored: list[list[EventInsert]] = [[] for _ in uploads]
        for (key, n), ev in zip(first.items(), rows, strict=True):
            if key in inserted:
                stored[n].append(ev)
        return [
            StoreError(f"storing events: no host {u.host_id!r}")
            if u.rows and u.host_id not in known
            else stored[n]
            for n, u in enumerate(uploads)
        ]

    def page(self, kind: str, flt: EventFilter, *, after_id: int, limit: int) -> tuple[list[EventRow], bool]:
        """Up to `limit` events with id > after_id in receive order; and whether more follow."""
        with db_errors("listing events"), read_connection(self._engine) as conn:
            _snapshot(conn)
            flt = resolve_host(conn, flt)
            p = plan(conn, kind, flt)
            if p.empty:
                return [], False
            after, before = p.cursors(after_id, None)
            query = page_query(
                kind, flt, after_id=after, before_id=before, limit=limit + 1, walk_ids=p.walk_ids
            )
            rows = conn.execute(query).all()
        return [_stored(r) for r in rows[:limit]], len(rows) > limit

    def newest(
        self, kind: str, flt: EventFilter, *, before_id: int | None, limit: int
    ) -> tuple[list[EventRow], bool]:
        """Up to `limit` events, newest received first (the console's lists); and whether older follow."""
        with db_errors("listing events"), read_connection(self._engine) as conn:
            _snapshot(conn)
            flt = resolve_host(conn, flt)
            p = plan(conn, kind, flt, newest_first=True)
            if p.empty:
                return [], False
            after, before = p.cursors(0, before_id)
            query = page_query(
                kind, flt, after_id=after, before_id=before, limit=limit + 1, newest_first=True,
                walk_ids=p.walk_ids,
            )  # fmt: skip
            rows = conn.execute(query).all()
        return [_stored(r) for r in rows[:limit]], len(rows) > limit

    def set_triage(
        self, keys: Sequence[tuple[str, str]], state: str | None, note: str, by: str, role: str, now: datetime
    ) -> int:
        """Triage violations named by (host id, event id); state None reopens. Audited in the same
        transaction. Returns how many violations changed."""
        from server_stub.store import audit

        if not keys:
            return 0
        changed = 0
        with db_errors("triaging violations"), self._engine.begin() as conn:
            serialize_writers(conn, "endpoint-server:triage")  # old and new state counted once each
            rollup.lock_hosts(conn, (host_id for host_id, _ in keys))  # before any row: no deadlock
            for host_id, event_id in keys:
                where = (
                    events.c.host_id == host_id,
                    events.c.event_id == event_id,
                    events.c.kind == VIOLATION,
                )
                before = conn.execute(sa.select(*rollup.FACT_COLUMNS).where(*where)).first()
                if before is None:
                    continue
                result = conn.execute(
                    sa.update(events)
                    .where(
                        events.c.host_id == host_id, events.c.event_id == event_id, events.c.kind == VIOLATION
                    )
                    .values(
                        triage_state=state,
                        triage_note=note if state else None,
                        triage_by=by if state else None,
                        triage_at=now if state else None,
                    )
                )
                if result.rowcount:
                    changed += 1
                    if before.triage_state != state:
                        old = rollup.fact(before)
                        rollup.apply(conn, [old], -1)
                        rollup.apply(conn, [replace(old, triage=state or rollup.OPEN)], +1)
                    audit.append(
                        conn,
                        now,
                        by,
                        role,
                        audit.TRIAGE,
                        f"{host_id}/{event_id}",
                        f"{state or 'reopened'}: {note}",
                    )
        return changed


@contextmanager
def _transaction(engine: Engine, held: Connection | None) -> Iterator[Connection]:
    """A transaction on the held connection, or on one from the pool."""
    if held is None:
        with engine.begin() as conn:
            yield conn
        return
    with held.begin():
        yield held


@contextmanager
def _driver_errors(what: str) -> Iterator[None]:
    """db_errors for statements sent through the driver itself (SQLAlchemy does not see them)."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        detail = lines[0][:200] if lines else type(exc).__name__
        raise StoreError(f"database error while {what}: {type(exc).__name__}: {detail}") from exc


# The group's statements are planned once per connection (psycopg prepares them), not per group:
# left to choose, PostgreSQL re-planned the insert and its rollup CTEs for every group (a sixth of
# its CPU for a group of one 50-event upload). The generic plan looks rollup rows up by key; it is
# made again when ANALYZE (autovacuum) changes the tables' statistics. This transaction only.
_GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"


class _SomeHostUnknown(Exception):
    """A pipelined group named a host that does not exist: rolled back, stored the stepwise way."""


def _pipelined(
    conn: Connection, uploading: set[str], host_ids: list[str], rows: list[EventInsert], now: datetime
) -> set[tuple[str, str]] | None:
    """PostgreSQL: `_insert_group`'s transaction in two round trips instead of four: BEGIN, the
    hosts' locks and the insert go out together (psycopg's pipeline mode: the database still runs
    them in order, so the insert's snapshot is taken after the locks are held), then COMMIT.
    The rows inserted, or None (rolled back) when a host does not exist: the caller then stores
    the group the stepwise way, which leaves that host's rows out."""
    lock_sql, lock_params = rollup.lock_uploaders_statement(uploading)
    counts = rollup.new_counts(host_ids, rows)
    insert = hosts_insert(conn, host_ids, rows, now, with_inserted=rollup.COUNT_NEW, with_params=counts)
    try:
        with db_errors("storing events"), _driver_errors("storing events"), conn.begin():
            driver: Any = conn.connection.driver_connection  # psycopg's
            with driver.pipeline():
                locks = driver.cursor()
                locks.execute(_GENERIC_PLANS)
                locks.execute(lock_sql, lock_params)
                counted = driver.cursor()
                counted.execute(insert.sql, insert.params)
            if rollup.uploaders_known(locks.fetchall()) != uploading:
                raise _SomeHostUnknown
            row = counted.fetchone()
            if row is None:
                raise StoreError("storing events: the insert answered nothing")
            inserted = insert.inserted(row)
            _count_some(conn, host_ids, rows, inserted)
            return inserted
    except _SomeHostUnknown:
        return None


def _count_some(
    conn: Connection, host_ids: list[str], rows: list[EventInsert], inserted: set[tuple[str, str]]
) -> None:
    """The rollups of the violations `inserted` when not every row was (the insert's statement
    counted none of them: rollup.counting_ctes), in the insert's transaction."""
    if len(inserted) == len(rows):
        return
    rollup.apply(
        conn,
        [
            _fact(host, ev)
            for host, ev in zip(host_ids, rows, strict=True)
            if ev.kind == VIOLATION and (host, ev.event_id) in inserted
        ],
        +1,
    )


def _fact(host_id: str, ev: EventInsert) -> rollup.Fact:
    """A new (open) violation, as the rollups count it."""
    return rollup.Fact(
        detected_at=ev.detected_at,
        host_id=host_id,
        rule_id=ev.rule_id or "",
        category=ev.category or "",
        action=ev.action or "",
        triage=rollup.OPEN,
        stop_seconds=_stop_seconds(ev),
    )


_EVENT_COLUMNS = (
    events.c.id,
    events.c.host_id,
    hosts.c.hostname,
    events.c.received_at,
    events.c.data,
    events.c.triage_state,
    events.c.triage_note,
    events.c.triage_by,
    events.c.triage_at,
)


def _stored(r: Any) -> EventRow:
    return EventRow(
        id=r.id,
        host_id=r.host_id,
        hostname=r.hostname,
        received_at=r.received_at,
        data=r.data,
        triage=_triage(r),
    )


def _stop_seconds(ev: EventInsert) -> float:
    if ev.action not in rollup.STOPPED or ev.first_seen is None:
        return 0.0
    return max(0.0, (ev.detected_at - ev.first_seen).total_seconds())
