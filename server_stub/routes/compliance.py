"""Triage, the compliance report and the audit log, for tokens (the console shows the same data)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from server_stub.auth import AdminOnly, Reader
from server_stub.context import Ctx
from server_stub.models import AuditOut, AuditPage, TriageRequest, TriageResponse
from server_stub.pagination import decode_cursor, encode_cursor
from server_stub.reporting import build_report, report_csv, report_json
from server_stub.routes.admin import TOKEN_ACTOR
from server_stub.routes.reports import SINCE_DOC
from server_stub.store import EventFilter
from server_stub.timeparse import parse_time

router = APIRouter(tags=["compliance"])


@router.post("/violations/triage", response_model=TriageResponse)
def triage(body: TriageRequest, _: AdminOnly, ctx: Ctx) -> TriageResponse:
    """Mark violations acknowledged, false_positive or escalated with a note ('open' clears it)."""
    state = None if body.state == "open" else body.state
    keys = [(item.host, item.event_id) for item in body.items]
    changed = ctx.store.events.set_triage(keys, state, body.note, TOKEN_ACTOR, "admin", ctx.now())
    return TriageResponse(changed=changed)


@router.get(
    "/report",
    responses={200: {"content": {"application/json": {}, "text/html": {}, "text/csv": {}}}},
)
def report(
    _: Reader,
    ctx: Ctx,
    since: Annotated[str | None, Query(description=SINCE_DOC)] = "30d",
    until: Annotated[str | None, Query(description=SINCE_DOC)] = None,
    format: Literal["json", "html", "csv"] = "json",
) -> Response:
    """The compliance report of a period: fleet coverage, violations, stop times, open violations."""
    now = ctx.now()
    flt = EventFilter(since=parse_time("since", since, now), until=parse_time("until", until, now))
    data = build_report(ctx.store, flt, now, ctx.config.stale_after)
    if format == "csv":
        return PlainTextResponse(report_csv(data), media_type="text/csv; charset=utf-8")
    if format == "html":
        from server_stub.console.render import render_report_document

        return HTMLResponse(render_report_document(data))
    from fastapi.responses import JSONResponse

    return JSONResponse(report_json(data))


@router.get("/audit", response_model=AuditPage)
def audit_log(
    _: Reader,
    ctx: Ctx,
    action: str | None = None,
    actor: str | None = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Publish, rollout, rollback, triage and user changes, newest first, with who and when."""
    before = decode_cursor(cursor) or None
    items, more = ctx.store.audit.entries(action=action, actor=actor, before_id=before, limit=limit)
    return AuditPage(
        items=[
            AuditOut(
                id=e.id,
                at=e.at,
                actor=e.actor,
                role=e.role,
                action=e.action,
                target=e.target,
                detail=e.detail,
            )
            for e in items
        ],
        next_cursor=encode_cursor(items[-1].id) if more and items else None,
    )
