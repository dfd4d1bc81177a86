"""What the security team reads: violations, agent events, hosts, summary."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from endpoint_contract.bounds import INT_MAX, json_problem, text_problem
from endpoint_contract.timestamps import iso_utc
from endpoint_contract.vocabulary import Severity
from server_stub.auth import Reader
from server_stub.context import Ctx, ServerContext
from server_stub.errors import BadRequest
from server_stub.hostlist import host_list_json
from server_stub.models import CountOut, EventPage, HostList, SummaryOut
from server_stub.pagination import decode_cursor, decode_host_cursor, encode_cursor, encode_host_cursor
from server_stub.store import EventFilter, EventRow
from server_stub.store.events import AGENT, TRIAGE_FILTERS, VIOLATION
from server_stub.store.hosts import HostFilter
from server_stub.store.stats import Summary
from server_stub.timeparse import parse_time

router = APIRouter(tags=["reports"])

SINCE_DOC = "ISO 8601 time (naive means UTC) or relative to now: 30m, 24h, 7d"
TRIAGE_DOC = "open (untriaged), triaged (any state), acknowledged, false_positive or escalated"
MAX_LIMIT = 1000
HOST_PAGE = 500  # hosts a call without `limit` gets: one page stays within its time budget


def triage_filter(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in TRIAGE_FILTERS:
        raise BadRequest(f"triage: {value!r} is not one of {', '.join(TRIAGE_FILTERS)}")
    return value


def event_item(ev: EventRow) -> dict[str, Any]:
    """A stored event as the API shows it (the console's downloads use the same)."""
    triage = None
    if ev.triage is not None:
        t = ev.triage
        triage = {"state": t.state, "note": t.note, "by": t.by, "at": iso_utc(t.at)}
    data = ev.data
    problem = json_problem(data)
    if problem is not None:
        # A row stored before today's bounds (endpoint_contract/bounds.py) is shown by its id and the
        # reason, so that one row can never fail the whole page.
        data = {
            "event_id": str(data.get("event_id", "")),
            "kind": str(data.get("kind", "")),
            "unreadable": problem,
        }
    # Server-side facts last: a key in the uploaded event can never pose as another host.
    return {
        **data,
        "host": ev.host_id,
        "host_id": ev.host_id,
        "hostname": ev.hostname,
        "received_at": iso_utc(ev.received_at),
        "triage": triage,
    }


def violation_filter(
    ctx: ServerContext,
    since: str | None,
    until: str | None,
    host: str | None,
    rule_id: str | None,
    category: str | None,
    action: str | None,
    triage: str | None,
    severity: str | None = None,
) -> EventFilter:
    """The filter of the violation list and the summary (and of the console's pages)."""
    now = ctx.now()
    return EventFilter(
        since=parse_time("since", since, now),
        until=parse_time("until", until, now),
        host=host or None,
        rule_id=rule_id or None,
        category=category or None,
        action=action or None,
        triage=triage_filter(triage),
        severity=severity or None,
    )


def json_body(model: BaseModel) -> Response:
    """A list answered as pydantic writes it: FastAPI would validate the model it was just given
    again and encode it value by value, most of the cost of a page of a thousand hosts. The
    route's response_model still documents it."""
    return Response(model.model_dump_json(), media_type="application/json")


def _page(ctx: ServerContext, kind: str, flt: EventFilter, cursor: str | None, limit: int) -> Response:
    items, more = ctx.store.events.page(kind, flt, after_id=decode_cursor(cursor), limit=limit)
    next_cursor = encode_cursor(items[-1].id) if more and items else None
    return json_body(EventPage(items=[event_item(ev) for ev in items], next_cursor=next_cursor))


@router.get("/violations", response_model=EventPage)
def violations(
    _: Reader,
    ctx: Ctx,
    since: Annotated[str | None, Query(description=SINCE_DOC)] = None,
    until: Annotated[str | None, Query(description=SINCE_DOC)] = None,
    host: Annotated[str | None, Query(description="host id or hostname")] = None,
    rule_id: str | None = None,
    category: str | None = None,
    action: str | None = None,
    triage: Annotated[str | None, Query(description=TRIAGE_DOC)] = None,
    severity: Annotated[Severity | None, Query(description="low, medium, high or critical")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> Response:
    """Violations in the order the server received them (stable cursor pagination)."""
    flt = violation_filter(
        ctx, since, until, host, rule_id, category, action, triage, severity.value if severity else None
    )
    return _page(ctx, VIOLATION, flt, cursor, limit)


@router.get("/agent-events", response_model=EventPage)
def agent_events(
    _: Reader,
    ctx: Ctx,
    since: Annotated[str | None, Query(description=SINCE_DOC)] = None,
    until: Annotated[str | None, Query(description=SINCE_DOC)] = None,
    host: Annotated[str | None, Query(description="host id or hostname")] = None,
    type: Annotated[str | None, Query(description="e.g. circuit_open, policy_unsafe, events_dropped")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> Response:
    """What agents reported about themselves (dropped events, open circuit, rejected policies)."""
    now = ctx.now()
    flt = EventFilter(
        since=parse_time("since", since, now), until=parse_time("until", until, now), host=host, type=type
    )
    return _page(ctx, AGENT, flt, cursor, limit)


@router.get("/hosts", response_model=HostList)
def hosts(
    _: Reader,
    ctx: Ctx,
    stale: Annotated[bool | None, Query(description="true: only stale hosts; false: only the others")] = None,
    mode: Annotated[str | None, Query(max_length=32, description="e.g. enforce or monitor")] = None,
    policy_version: Annotated[int | None, Query(ge=0, le=INT_MAX)] = None,
    hostname_prefix: Annotated[str | None, Query(max_length=256, description="names starting so")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = HOST_PAGE,
) -> Response:
    """Enrolled hosts by name, a page at a time; `stale` when a host has been silent longer than
    --stale-after."""
    cutoff = ctx.now() - timedelta(seconds=ctx.config.stale_after)
    for name, text in (("mode", mode), ("hostname_prefix", hostname_prefix)):
        problem = text_problem(text) if text else None
        if problem:
            raise BadRequest(f"{name}: {problem}")
    flt = HostFilter(
        silent_before=cutoff if stale is True else None,
        seen_since=cutoff if stale is False else None,
        mode=mode or None,
        policy_version=policy_version,
        hostname_prefix=hostname_prefix or None,
    )
    rows, more = ctx.store.hosts.listing(flt, after=decode_host_cursor(cursor), limit=limit)
    last = rows[-1] if more and rows else None
    next_cursor = encode_host_cursor(last.hostname, last.host_id) if last else None
    return Response(host_list_json(rows, next_cursor, cutoff), media_type="application/json")


@router.get("/summary", response_model=SummaryOut, response_model_exclude_none=True)
def summary(
    _: Reader,
    ctx: Ctx,
    since: Annotated[str | None, Query(description=SINCE_DOC)] = None,
    until: Annotated[str | None, Query(description=SINCE_DOC)] = None,
    host: Annotated[str | None, Query(description="host id or hostname")] = None,
    rule_id: str | None = None,
    category: str | None = None,
    action: str | None = None,
    triage: Annotated[str | None, Query(description=TRIAGE_DOC)] = None,
) -> Response:
    """Violation counts by rule, category, action, triage state and host, for the list's filters."""
    flt = violation_filter(ctx, since, until, host, rule_id, category, action, triage)
    s = ctx.store.stats.summary(flt, host_texts=True)
    out = summary_model(flt, s)
    body = out.model_dump_json(exclude_none=True)  # as pydantic writes it (see json_body)
    if s.by_host_texts is None:
        return Response(body, media_type="application/json")
    # by_host lists every host with a violation (tens of thousands), each entry written as JSON
    # text by the database, where a CountOut per host cost more than counting them. It is the
    # model's last field: its empty list is replaced.
    hosts_json = f"[{','.join(s.by_host_texts)}]"
    if not body.endswith(_NO_HOSTS):  # the model changed its order: the slow way
        out.by_host = [CountOut.model_validate(c) for c in json.loads(hosts_json)]
        return Response(out.model_dump_json(exclude_none=True), media_type="application/json")
    return Response(f'{body[: -len(_NO_HOSTS)]}"by_host":{hosts_json}}}', media_type="application/json")


def summary_model(flt: EventFilter, s: Summary) -> SummaryOut:
    """The summary of the filter's violations as the API's model holds it (by_host from s.by_host)."""
    return SummaryOut(
        since=flt.since,
        until=flt.until,
        total=s.total,
        open=s.open,
        by_triage=[CountOut(triage=c.key, count=c.count) for c in s.by_triage],
        by_rule=[CountOut(rule_id=c.key, count=c.count) for c in s.by_rule],
        by_category=[CountOut(category=c.key, count=c.count) for c in s.by_category],
        by_action=[CountOut(action=c.key, count=c.count) for c in s.by_action],
        by_host=[CountOut(host=c.key, hostname=c.label, count=c.count) for c in s.by_host],
    )


_NO_HOSTS = '"by_host":[]}'
