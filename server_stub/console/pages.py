"""The console's pages and forms (server-rendered; no script).

Each page reads the same store queries the API uses with the same filter, so what a page shows
is what `/api/v1` returns. Forms post back with the session's CSRF token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.datastructures import FormData

from endpoint_agent.errors import PolicySignatureError, PolicyValidationError
from endpoint_agent.policy import Policy
from endpoint_contract.envelope import verify_envelope
from server_stub.console import auth
from server_stub.console.auth import ConsoleDenied, Level, Viewer
from server_stub.console.passwords import burn_time, lockout_until, verify_password
from server_stub.console.render import day_chart, render, render_report_document, report_context
from server_stub.context import ServerContext, get_context
from server_stub.errors import ApiError
from server_stub.pagination import decode_cursor, encode_cursor
from server_stub.reporting import build_report, current_version, report_csv
from server_stub.routes.admin import publish_envelope, set_rollout_percent
from server_stub.routes.reports import event_item, violation_filter
from server_stub.store import EventFilter, EventRow
from server_stub.store.events import AGENT, TRIAGE_FILTERS, TRIAGE_STATES, VIOLATION

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
PERIODS = {"24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days", "90d": "last 90 days"}
FILTER_KEYS = ("since", "until", "host", "rule_id", "category", "action", "triage")
MAX_DOWNLOAD = 1_000_000


def _page(
    request: Request, viewer: Viewer | None, template: str, status: int = 200, **context: Any
) -> HTMLResponse:
    ctx = get_context(request)
    html = render(
        template,
        viewer=viewer,
        now=ctx.now(),
        path=request.url.path,
        Level=Level,
        periods=PERIODS,
        **context,
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def _period(request: Request, default: str = "30d") -> str:
    value = request.query_params.get("since") or default
    return value


def _filters(request: Request) -> dict[str, str]:
    return {k: v for k in FILTER_KEYS if (v := request.query_params.get(k, "").strip())}


def _before(request: Request) -> int | None:
    try:
        return decode_cursor(request.query_params.get("before")) or None
    except ApiError as exc:
        raise ConsoleDenied(exc.message, status=400) from None


def _flt(ctx: ServerContext, given: dict[str, str]) -> EventFilter:
    try:
        return violation_filter(ctx, *(given.get(k) for k in FILTER_KEYS))
    except ApiError as exc:  # a bad since/until/triage in the address: a page, not JSON
        raise ConsoleDenied(exc.message, status=400) from None


# --- sign-in ----------------------------------------------------------------------------------


@router.get("/signin")
def signin_form(request: Request, error: str | None = None, name: str = "") -> HTMLResponse:
    token = auth.signin_token(request)
    response = _page(
        request, None, "signin.html", csrf=token, error=error, name=name, status=401 if error else 200
    )
    auth.set_cookie(response, request, auth.SIGNIN_COOKIE, token, 3600)
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    ctx = get_context(request)
    form = await request.form()
    auth.check_csrf(request.cookies.get(auth.SIGNIN_COOKIE), form.get("csrf_token"))
    name = str(form.get("name", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    now = ctx.now()
    user = ctx.store.users.get(name) if name else None
    if user is None or user.disabled:
        burn_time(password)
        return signin_form(request, "Wrong user name or password.", name)
    wait = auth.locked_for(user, now)
    if wait:
        return signin_form(
            request, f"Too many failed sign-ins: this account may try again in {wait} s.", name
        )
    if not verify_password(user.password_hash, password):
        ctx.store.users.record_failure(user.id, lockout_until(user.failed_signins + 1, now))
        return signin_form(request, "Wrong user name or password.", name)
    ctx.store.users.record_success(user.id, now)
    response = RedirectResponse("/", status_code=303)
    auth.start_session(ctx, request, response, user)
    return response


async def _posted(request: Request, level: Level, refusal: str) -> tuple[Viewer, FormData]:
    """The signed-in viewer and the form of a POST: CSRF token checked first, then the role."""
    viewer = auth.require(get_context(request), request)
    form = await request.form()
    auth.check_csrf(viewer.csrf_token, form.get("csrf_token"))
    if not viewer.can(level):
        raise ConsoleDenied(f"your role ({viewer.role}) {refusal}")
    return viewer, form


@router.post("/signout")
async def signout(request: Request) -> Response:
    ctx = get_context(request)
    viewer, _ = await _posted(request, Level.READER, "may not sign out")
    response = RedirectResponse("/signin", status_code=303)
    auth.end_session(ctx, viewer, response)
    return response


# --- overview and report ----------------------------------------------------------------------


@router.get("/")
def overview(request: Request) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    since = _period(request)
    flt = _flt(ctx, {"since": since})
    report = build_report(ctx.store, flt, ctx.now(), ctx.config.stale_after)
    return _page(request, viewer, "overview.html", since=since, **report_context(report))


@router.get("/report")
def report_page(request: Request) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    since = _period(request)
    flt = _flt(ctx, {"since": since, "until": request.query_params.get("until", "")})
    report = build_report(ctx.store, flt, ctx.now(), ctx.config.stale_after)
    return _page(
        request,
        viewer,
        "report.html",
        since=since,
        query=urlencode({"since": since}),
        **report_context(report),
    )


@router.get("/report.csv")
@router.get("/report.html")
def report_download(request: Request) -> Response:
    ctx = get_context(request)
    auth.require(ctx, request)
    flt = _flt(ctx, {"since": _period(request), "until": request.query_params.get("until", "")})
    report = build_report(ctx.store, flt, ctx.now(), ctx.config.stale_after)
    if request.url.path.endswith(".csv"):
        stamp = ctx.now().strftime("%Y%m%d")
        return Response(
            report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="compliance-report-{stamp}.csv"'},
        )
    return HTMLResponse(render_report_document(report), headers={"Cache-Control": "no-store"})


# --- violations -------------------------------------------------------------------------------


@router.get("/violations")
def violations(request: Request) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    given = _filters(request)
    given.setdefault("since", "30d")
    flt = _flt(ctx, given)
    before = _before(request)
    summary = ctx.store.stats.summary(flt, top=0)
    items, more = _newest(ctx, flt, summary.total, before, PAGE_SIZE)
    older = urlencode({**given, "before": encode_cursor(items[-1].id)}) if more and items else None
    return _page(
        request,
        viewer,
        "violations.html",
        items=[(ev, event_item(ev)) for ev in items],
        filters=given,
        query=urlencode(given),
        older=older,
        newest=urlencode(given) if before else None,
        summary=summary,
        triage_filters=TRIAGE_FILTERS,
        triage_states=TRIAGE_STATES,
        message=request.query_params.get("message"),
    )


def _newest(
    ctx: ServerContext, flt: EventFilter, total: int, before: int | None, limit: int
) -> tuple[list[EventRow], bool]:
    """The newest violations of the filter; none to look for when its count is zero (the list
    walks ids back from the newest, which finds nothing only after reading everything)."""
    if total == 0:
        return [], False
    return ctx.store.events.newest(VIOLATION, flt, before_id=before, limit=limit)


def _download(ctx: ServerContext, flt: EventFilter, fmt: str) -> Iterator[str]:
    import csv
    import io

    columns = [
        "detected_at", "hostname", "host", "rule_id", "category", "action", "process_name", "exe", "pid",
        "username", "reason", "policy_version", "triage_state", "triage_note", "triage_by", "event_id",
    ]  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(columns)
        yield buf.getvalue()
    after, sent = 0, 0
    while sent < MAX_DOWNLOAD:
        items, more = ctx.store.events.page(VIOLATION, flt, after_id=after, limit=1000)
        for ev in items:
            item = event_item(ev)
            if fmt == "ndjson":
                yield json.dumps(item, sort_keys=True, default=str) + "\n"
                continue
            triage = item.get("triage") or {}
            row = {**item, "triage_state": triage.get("state", "open"), "triage_note": triage.get("note", ""),
                   "triage_by": triage.get("by", "")}  # fmt: skip
            buf.seek(0)
            buf.truncate()
            writer.writerow(["" if row.get(c) is None else _cell(row.get(c)) for c in columns])
            yield buf.getvalue()
        sent += len(items)
        if not more or not items:
            return
        after = items[-1].id


def _cell(value: object) -> str:
    text = str(value)
    # A cell starting with = + - @ would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@router.get("/violations.csv")
@router.get("/violations.ndjson")
def download(request: Request) -> Response:
    ctx = get_context(request)
    auth.require(ctx, request)
    fmt = "csv" if request.url.path.endswith(".csv") else "ndjson"
    flt = _flt(ctx, _filters(request))
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    stamp = ctx.now().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _download(ctx, flt, fmt),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="violations-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/violations/triage")
async def triage(request: Request) -> Response:
    ctx = get_context(request)
    viewer, form = await _posted(
        request, Level.ANALYST, "may read but not triage; ask an analyst or an admin"
    )
    state = str(form.get("state", ""))
    if state not in (*TRIAGE_STATES, "open"):
        raise ConsoleDenied("choose a triage state", status=400)
    keys = []
    for value in form.getlist("violation")[:500]:
        host, _, event_id = str(value).partition("/")
        if host and event_id:
            keys.append((host, event_id))
    note = str(form.get("note", ""))[:2000]
    changed = ctx.store.events.set_triage(
        keys, None if state == "open" else state, note, viewer.name, viewer.role, ctx.now()
    )
    back = str(form.get("back", ""))
    back = back if back.startswith("/") and not back.startswith("//") else "/violations"
    sep = "&" if "?" in back else "?"
    return RedirectResponse(
        f"{back}{sep}{urlencode({'message': f'{changed} violation(s) marked {state}'})}", 303
    )


# --- hosts ------------------------------------------------------------------------------------


@router.get("/hosts")
def hosts(request: Request) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    search = request.query_params.get("q", "").strip()[:256]
    offset = _int(request.query_params.get("offset"), 0)
    rows, total = ctx.store.hosts.search(search, offset=offset, limit=100)
    return _page(
        request, viewer, "hosts.html", hosts=rows, total=total, q=search, offset=offset, limit=100,
        stale_after=ctx.config.stale_after,
    )  # fmt: skip


@router.get("/hosts/{host}")
def host_page(request: Request, host: str) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    record = ctx.store.hosts.get(host)
    if record is None:
        raise ConsoleDenied(f"no host {host!r} is enrolled", status=404)
    since = _period(request)
    flt = _flt(ctx, {"since": since, "host": record.host_id})
    summary = ctx.store.stats.summary(flt)
    per_day = ctx.store.stats.per_day(flt)
    items, _ = _newest(ctx, flt, summary.total, None, 100)
    agent, _ = ctx.store.events.newest(
        AGENT, EventFilter(since=flt.since, host=record.host_id), before_id=None, limit=100
    )
    timeline = sorted(
        [("violation", ev, event_item(ev)) for ev in items] + [("agent", ev, event_item(ev)) for ev in agent],
        key=lambda t: str(t[2].get("detected_at", "")),
        reverse=True,
    )
    now = ctx.now()
    first = (flt.since or now).date()
    return _page(
        request,
        viewer,
        "host.html",
        host=record,
        since=since,
        summary=summary,
        timeline=timeline[:150],
        stale=record.last_seen is None or (now - record.last_seen).total_seconds() > ctx.config.stale_after,
        chart=day_chart(per_day, first, now.date(), "action", f"violations per day on {record.hostname}"),
        query=urlencode({"since": since, "host": record.host_id}),
        triage_states=TRIAGE_STATES,
    )


# --- rules ------------------------------------------------------------------------------------


def _active_rules(ctx: ServerContext) -> dict[str, Any]:
    """Rule id -> rule model of the current policy (empty when none is published)."""
    version = current_version(ctx.store)
    if version is None:
        return {}
    served = ctx.store.policies.envelope(version)
    if served is None:
        return {}
    try:
        policy = verify_envelope(served, ctx.config.public_keys, Policy).policy
    except (PolicySignatureError, PolicyValidationError):
        return {}  # signed by a key this server no longer trusts
    return {rule.id: rule for rule in policy.rules}


@router.get("/rules")
def rules(request: Request) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    since = _period(request)
    flt = _flt(ctx, {"since": since})
    hits = {c.key: c.count for c in ctx.store.stats.summary(flt, top=0).by_rule}
    active = _active_rules(ctx)
    rows = [
        (rule_id, active.get(rule_id), hits.get(rule_id, 0)) for rule_id in sorted(set(active) | set(hits))
    ]
    rows.sort(key=lambda r: (-r[2], r[0]))
    return _page(
        request, viewer, "rules.html", rows=rows, since=since, unused=[r for r in rows if r[2] == 0 and r[1]],
        version=current_version(ctx.store),
    )  # fmt: skip


@router.get("/rules/{rule_id}")
def rule_page(request: Request, rule_id: str) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    since = _period(request)
    flt = _flt(ctx, {"since": since, "rule_id": rule_id})
    summary = ctx.store.stats.summary(flt, top=20)
    per_day = ctx.store.stats.per_day(flt)
    items, _ = _newest(ctx, flt, summary.total, None, 25)
    rule = _active_rules(ctx).get(rule_id)
    text = yaml.safe_dump(rule.model_dump(mode="json", exclude_none=True), sort_keys=False) if rule else None
    now = ctx.now()
    return _page(
        request,
        viewer,
        "rule.html",
        rule_id=rule_id,
        rule_text=text,
        since=since,
        summary=summary,
        items=[(ev, event_item(ev)) for ev in items],
        chart=day_chart(
            per_day, (flt.since or now).date(), now.date(), "action", f"hits per day of {rule_id}"
        ),
        query=urlencode({"since": since, "rule_id": rule_id}),
    )


# --- policies and audit -----------------------------------------------------------------------


@router.get("/policies")
def policies(request: Request) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    versions = ctx.store.policies.versions()
    fleet = ctx.store.stats.fleet(ctx.now(), ctx.config.stale_after, current_version(ctx.store), held_limit=0)
    on_version = {c.key: c.count for c in fleet.versions}
    publishers = ctx.store.audit.publishers()
    return _page(
        request, viewer, "policies.html", versions=versions, on_version=on_version, publishers=publishers,
        fleet=fleet, message=request.query_params.get("message"), error=request.query_params.get("error"),
    )  # fmt: skip


def _back_to_policies(message: str | None = None, error: str | None = None) -> RedirectResponse:
    query = {"message": message} if message else {"error": error or ""}
    return RedirectResponse("/policies?" + urlencode(query), status_code=303)


@router.post("/policies/publish")
async def publish(request: Request) -> Response:
    ctx = get_context(request)
    viewer, form = await _posted(request, Level.ADMIN, "may not publish policies")
    upload = form.get("envelope")
    if upload is None or isinstance(upload, str):
        return _back_to_policies(
            error="choose a signed envelope file (endpoint-admin sign POLICY.yaml --key ...)"
        )
    data = await upload.read(ctx.config.max_body_bytes + 1)
    rollout = _int(str(form.get("rollout", "100")), -1)
    if not 0 <= rollout <= 100:
        return _back_to_policies(error="rollout must be a percent from 0 to 100")
    try:
        stored, _ = publish_envelope(ctx, data.decode("utf-8", "replace"), rollout, viewer.name)
    except ApiError as exc:
        return _back_to_policies(error=exc.message)
    return _back_to_policies(f"published version {stored.version} to {rollout}% of hosts")


@router.post("/policies/rollout")
async def rollout(request: Request) -> Response:
    ctx = get_context(request)
    viewer, form = await _posted(request, Level.ADMIN, "may not change the rollout")
    percent = _int(str(form.get("percent", "")), -1)
    if not 0 <= percent <= 100:
        return _back_to_policies(error="rollout must be a percent from 0 to 100")
    try:
        state = set_rollout_percent(ctx, percent, viewer.name)
    except ApiError as exc:
        return _back_to_policies(error=exc.message)
    return _back_to_policies(f"version {state.version} now rolled out to {percent}% of hosts")


@router.get("/audit")
def audit_page(request: Request) -> HTMLResponse:
    ctx = get_context(request)
    viewer = auth.require(ctx, request)
    action = request.query_params.get("action") or None
    before = _before(request)
    entries, more = ctx.store.audit.entries(action=action, before_id=before, limit=100)
    older = (
        urlencode({k: v for k, v in {"action": action, "before": encode_cursor(entries[-1].id)}.items() if v})
        if more and entries
        else None
    )
    from server_stub.store.audit import ACTIONS

    return _page(request, viewer, "audit.html", entries=entries, action=action, actions=ACTIONS, older=older)


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
