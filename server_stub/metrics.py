"""Prometheus metrics of the server, at GET /metrics (reader or admin token).

- `endpoint_server_events_received_total{kind}`: events accepted by POST /events (ingest rate:
  `rate(endpoint_server_events_received_total[5m])`);
- `endpoint_server_requests_total{method,status}`: every API answer, by status code;
- `endpoint_server_requests_refused_total{reason}`: requests refused at once with 503 because
  --max-in-flight were in progress (`overload`), server_stub/admission.py;
- `endpoint_server_hosts{state}`: enrolled hosts, `ok` or `stale` (silent longer than --stale-after);
- `endpoint_server_hosts_by_mode{mode}`: hosts by the mode their last heartbeat reported;
- `endpoint_server_agent_queue_pending` / `endpoint_server_agent_events_dropped`: the agents' own
  upload queues, summed from their last heartbeats (events waiting on the workstations).

Host gauges are read from the store when scraped, so every server process answers the same.
Each app has its own registry (several apps in one process, as in tests, do not collide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server_stub.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, store: Store, stale_after: float, now: Callable[[], datetime]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._events = Counter(
            "endpoint_server_events_received",
            "Events accepted by POST /events, by kind",
            ["kind"],
            registry=self.registry,
        )
        self._requests = Counter(
            "endpoint_server_requests",
            "API answers by method and status code",
            ["method", "status"],
            registry=self.registry,
        )
        self._refused = Counter(
            "endpoint_server_requests_refused",
            "Requests refused with 503 before any work, by reason",
            ["reason"],
            registry=self.registry,
        )
        self._overload = self._refused.labels(reason="overload")
        self._answered: dict[tuple[str, int], Any] = {}
        self.registry.register(_HostCollector(store, stale_after, now))

    def events_received(self, kind: str, count: int) -> None:
        self._events.labels(kind=kind).inc(count)

    def refused_overload(self) -> None:
        self._overload.inc()

    def answered(self, method: str, status: int) -> None:
        child = self._answered.get((method, status))
        if child is None:  # labels() costs more than the count itself: once per (method, status)
            child = self._requests.labels(method=method, status=str(status))
            if len(self._answered) < 256:  # methods come from clients: bounded
                self._answered[(method, status)] = child
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _HostCollector(Collector):
    def __init__(self, store: Store, stale_after: float, now: Callable[[], datetime]) -> None:
        self._store, self._stale_after, self._now = store, stale_after, now

    def collect(self) -> Iterator[Any]:
        now = self._now()
        states = {"ok": 0, "stale": 0}
        modes: dict[str, int] = {}
        pending = dropped = 0
        for host in self._store.hosts.list_hosts():
            silent = host.last_seen is None or (now - host.last_seen).total_seconds() > self._stale_after
            states["stale" if silent else "ok"] += 1
            mode = host.mode or "unknown"
            modes[mode] = modes.get(mode, 0) + 1
            pending += int(host.counters.get("queue_pending", 0))
            dropped += int(host.counters.get("dropped_events", 0))
        by_state = GaugeMetricFamily("endpoint_server_hosts", "Enrolled hosts by state", labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state], count)
        by_mode = GaugeMetricFamily(
            "endpoint_server_hosts_by_mode", "Hosts by the mode of their last heartbeat", labels=["mode"]
        )
        for mode, count in sorted(modes.items()):
            by_mode.add_metric([mode], count)
        yield by_state
        yield by_mode
        yield GaugeMetricFamily(
            "endpoint_server_agent_queue_pending",
            "Events waiting in the agents' upload queues (sum of their last heartbeats)",
            value=pending,
        )
        yield GaugeMetricFamily(
            "endpoint_server_agent_events_dropped",
            "Events the agents dropped from full queues (sum of their last heartbeats)",
            value=dropped,
        )


class RequestCountMiddleware:
    """Counts every HTTP answer by method and status (pure ASGI: the body streams untouched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.answered(scope["method"], int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)
