"""The FastAPI application: `create_app(config)` wires store, auth, middleware and routes."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from endpoint_agent import __version__
from endpoint_agent.errors import SettingsError, StoreError
from server_stub import heap, stallwatch
from server_stub.admission import Admission
from server_stub.apidocs import document_errors, render_docs
from server_stub.auth import Authenticator, Reader
from server_stub.config import ServerConfig
from server_stub.console import mount_console
from server_stub.context import ServerContext
from server_stub.enrollbatch import EnrollBatcher
from server_stub.enrollserve import ENROLL_DOOR_STATE, EnrollDoor, EnrollFastPath
from server_stub.errors import ApiError
from server_stub.export.service import ExportService
from server_stub.frontdoor import FrontDoor
from server_stub.ingestgroup import upload_groups
from server_stub.ingestserve import IngestFastPath, UploadDoor
from server_stub.keycache import NodeKeyCache, warm_keys
from server_stub.limits import Limits
from server_stub.listener import FRONT_DOOR_STATE, LISTENER_STATE, LoopLag
from server_stub.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server_stub.metrics import Metrics, RequestCountMiddleware
from server_stub.middleware import (
    UNLIMITED_PATHS,
    AuthGateMiddleware,
    BodyLimitMiddleware,
    api_error_response,
    error_response,
    store_error_response,
)
from server_stub.models import Health
from server_stub.periodic import Periodic
from server_stub.policycache import PolicyCache
from server_stub.ratesync import RateSync
from server_stub.retention import RetentionService
from server_stub.routes import admin, agent, compliance, enrollment, reports
from server_stub.store import Store, sqlite_url
from server_stub.store.engine import BACKGROUND_CONNECTIONS
from server_stub.watcher import CacheWatcher
from server_stub.writebehind import HostActivity

API_PREFIX = "/api/v1"
log = logging.getLogger(__name__)

# Union members of an event, which pydantic puts in error locations: not useful to a reader.
_UNION_TAGS = frozenset({"violation", "agent"})


def open_store(config: ServerConfig) -> Store:
    pool = config.threads + BACKGROUND_CONNECTIONS  # every thread that queries holds one connection
    if config.db_url:
        return Store.open(config.db_url, pool)
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"--data-dir: cannot create {config.data_dir}: {exc.strerror or exc}") from exc
    if not os.access(config.data_dir, os.W_OK):
        raise SettingsError(f"--data-dir: {config.data_dir} is not writable")
    return Store.open(sqlite_url(config.data_dir), pool)


def _retention(config: ServerConfig, store: Store) -> RetentionService | None:
    if not config.retention_days:
        return None
    sinks = [sink.name for sink in config.export.sinks]
    return RetentionService(
        store.retention,
        days=config.retention_days,
        export_floor=lambda: store.exports.lowest_cursor(sinks),
        clock=config.clock,
    )


class ServerApp(FastAPI):
    """The application, entered through its first layer (server_stub/frontdoor.py) when one is set."""

    front_door: FrontDoor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front_door is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front_door(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything behind the first layer: middleware, routing, error handlers."""
        await super().__call__(scope, receive, send)


def create_app(config: ServerConfig, store: Store | None = None) -> FastAPI:
    """The application; opens (and migrates) the store now, so a bad database fails at start."""
    store = store if store is not None else open_store(config)
    metrics = Metrics(store, config.stale_after, config.clock)
    limits = Limits.from_config(config)
    rate_sync = RateSync(store.rate_usage, limits.by_scope())
    # Hot paths from memory: node keys, served policies; contact times written behind.
    keys = NodeKeyCache()
    policies = PolicyCache(store.policies)
    watcher = CacheWatcher(store.changes, keys, policies, config.clock)
    keys.fresh = policies.fresh = watcher.fresh
    store.hosts.on_key_change.append(keys.forget)
    store.policies.on_change.append(policies.refresh)
    activity = HostActivity(store.hosts, config.write_behind)
    store.hosts.before_read.append(activity.flush)
    auth = Authenticator(config, store, keys, activity.seen)
    enrollments = EnrollBatcher(store.hosts.enroll_many, config.clock)  # group commit
    uploads = upload_groups(store, config.clock)  # group commit of uploads (PostgreSQL)
    ctx = ServerContext(
        config=config,
        store=store,
        auth=auth,
        metrics=metrics,
        policies=policies,
        activity=activity,
        limits=limits,
        enrollments=enrollments,
        uploads=uploads,
    )
    exporter = ExportService(config.export, store.exports, product_version=__version__, clock=config.clock)
    retention = _retention(config, store)

    admission = Admission(config.in_flight_limit, on_refused=metrics.refused_overload)
    lag = LoopLag(config.max_loop_lag, 4 * admission.limit, _refusable, _counter(metrics))
    if config.max_loop_lag > 0:
        admission.overloaded = lag.overloaded

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Sync routes run in at most this many threads; the database pool was sized to match.
        anyio.to_thread.current_default_thread_limiter().total_tokens = config.threads
        watcher.start()
        # The fleet's node keys in one query, beside serving: a restart is not a storm of lookups.
        threading.Thread(target=_warm_keys, args=(keys, store), name="key-cache-warm", daemon=True).start()
        policies.refresh()  # the first poll is answered from memory already
        activity.start()
        exporter.start()
        if retention is not None:
            retention.start()
        rate_sync.start()
        # uvicorn's protocol factory (server_stub/listener.py) finds these in the lifespan state.
        state: dict[str, Any] = {FRONT_DOOR_STATE: app.front_door} if app.front_door is not None else {}
        if app.front_door is not None:  # enrollments taken by the HTTP protocol (server_stub/enrollserve.py)
            state[ENROLL_DOOR_STATE] = EnrollDoor(ctx, f"{API_PREFIX}/enroll")
        if config.max_loop_lag > 0:
            lag.start()
            state[LISTENER_STATE] = lag
        stalls = stallwatch.from_env()  # a diagnostic: what held the loop up, logged per stall
        if stalls is not None:
            stalls.start()
        full_gc = Periodic("gc-full", heap.FULL_EVERY, heap.collect_old)  # once the heap is settled
        full_gc.start()
        try:
            yield state
        finally:
            full_gc.stop(timeout=1.0)
            heap.release()
            if stalls is not None:
                stalls.stop()
            lag.stop()
            rate_sync.stop()
            enrollments.stop()  # what is queued is written first
            if uploads is not None:
                uploads.stop()
            if retention is not None:
                retention.stop()
            exporter.stop()
            watcher.stop()
            try:
                activity.stop()  # the last contact times and heartbeats reach the database
            except StoreError as exc:
                log.error("could not write the last contact times on the way out: %s", exc)
            store.close()

    app = ServerApp(
        title="endpoint-server",
        version=__version__,
        description="Signed policy distribution and violation reports for endpoint agents.",
        docs_url=None,  # the stock pages load scripts from a CDN: /docs is rendered here instead
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    _install_error_handlers(app)
    # An enrollment answered once its body is read (no routing, no dependencies): server_stub/enrollserve.py.
    app.add_middleware(EnrollFastPath, path=f"{API_PREFIX}/enroll")
    # A node's valid batch stored once its body is read, the same way: server_stub/ingestserve.py.
    app.add_middleware(IngestFastPath, path=f"{API_PREFIX}/events")
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes, timeout=config.body_timeout)
    # Outside the body read: who calls is known (and limited) before a byte of the body is taken.
    app.add_middleware(
        AuthGateMiddleware,
        principals=limits.principals,
        addresses=limits.addresses,
        api_prefix=API_PREFIX,
        enrollments=limits,
    )
    app.add_middleware(RequestCountMiddleware, metrics=metrics)  # outermost: counts 413s, 429s
    # Before any of it: past --max-in-flight requests in progress, 503 + Retry-After at once; a
    # node's poll and heartbeat answered without the framework (counted there too).
    app.front_door = FrontDoor(app.framework, ctx, admission, API_PREFIX)
    if uploads is not None:  # a node's upload taken in the first layer (grouped: PostgreSQL)
        app.front_door.uploads = UploadDoor(app.front_door)

    @app.get(
        f"{API_PREFIX}/healthz", response_model=Health, response_model_exclude_none=True, tags=["health"]
    )
    async def healthz() -> Health:
        """Liveness, and each export sink's health (state, lag, last success, last error)."""
        # In the event loop unless a sink's lag needs the database: a busy server (every worker
        # thread taken) still answers its health check at once.
        sinks = await run_in_threadpool(exporter.health) if exporter.runners else {}
        return Health(export=sinks or None)

    for router in (agent.router, admin.router, reports.router, compliance.router, enrollment.router):
        app.include_router(router, prefix=API_PREFIX)
    _install_docs_and_metrics(app, metrics)
    mount_console(app)
    return app


def _warm_keys(keys: NodeKeyCache, store: Store) -> None:
    try:
        held = warm_keys(keys, store.hosts.keyed)
    except StoreError as exc:  # looked up one by one instead, as they come
        log.warning("could not read the node keys ahead: %s", exc)
        return
    log.debug("node keys held ahead: %d", held)
    if held >= heap.FLEET:  # what lives as long as the server: out of the collector's walks
        log.debug("objects frozen out of the garbage collector: %d", heap.settle())


def _refusable(path: bytes) -> bool:
    return path.decode("latin-1") not in UNLIMITED_PATHS


def _counter(metrics: Metrics) -> Callable[[str | None], None]:
    def refused(method: str | None) -> None:
        metrics.refused_overload()
        if method is not None:
            metrics.answered(method, 503)

    return refused


def _install_docs_and_metrics(app: FastAPI, metrics: Metrics) -> None:
    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    def prometheus_metrics(_: Reader) -> PlainTextResponse:
        """Prometheus metrics: ingest rate, agents' queue depths, hosts by state (server_stub/metrics.py)."""
        return PlainTextResponse(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = document_errors(schema, UNLIMITED_PATHS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, list[dict[str, str]]]:
    """('events[3].detected_at: Field required', [{"loc": ..., "msg": ...}, ...])."""
    details = []
    for err in errors:
        parts: list[str] = []
        loc = list(err.get("loc", ()))
        if loc and loc[0] in ("body", "query", "header", "path"):
            loc = loc[1:]
        previous: object = None
        for part in loc:
            if isinstance(part, int):
                parts.append(f"[{part}]")
            elif not (isinstance(previous, int) and part in _UNION_TAGS):
                parts.append(("." if parts else "") + str(part))
            previous = part
        details.append({"loc": "".join(parts) or "body", "msg": str(err.get("msg", "invalid"))})
    first = f"{details[0]['loc']}: {details[0]['msg']}" if details else "invalid request"
    return first, details[:50]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first, details = describe_validation_errors(exc.errors())
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        return JSONResponse({"error": f"invalid request: {first}{more}", "details": details}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        return store_error_response(exc)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal server error")
