"""The report job wired from the settings: upload of the store's events, and the heartbeat.

    job = build_report_job(settings, store=store, client=client, pulse=agent.pulse,
                           policy_rejections=lambda: sync.counters["rejected"])
    JobSpec("report", job.tick, report_tick_seconds(settings), at_shutdown=job.flush)

The job is ticked often (at most every second) and decides itself, from its jittered schedule,
when a round is due: every `upload_interval` while the server answers, backing off when not.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Protocol

from endpoint_agent import __version__
from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.errors import StoreError
from endpoint_agent.report.backoff import ReportSchedule
from endpoint_agent.report.heartbeat import AgentPulse, Heartbeat, HeartbeatSink, counters
from endpoint_agent.report.job import ReportJob
from endpoint_agent.report.store import StoreLimits, ViolationStore
from endpoint_agent.report.uploader import BatchSink, Uploader
from endpoint_agent.settings import AgentSettings
from endpoint_contract.heartbeat import MODE_REASON_MAX


class ReportClient(BatchSink, HeartbeatSink, Protocol):
    """What the report job needs of the server client (sync.client.HttpServerClient has both)."""


def agent_heartbeat(
    pulse: AgentPulse,
    store: ViolationStore,
    uploader: Uploader,
    *,
    policy_rejections: Callable[[], int] | None = None,
    extra_counters: Callable[[], Mapping[str, int]] | None = None,
) -> Heartbeat:
    try:
        pending: int | None = store.counts().pending
    except StoreError:  # a failing store must not stop the heartbeat that would reveal it
        pending = None
    return Heartbeat(
        agent_version=__version__,
        policy_version=pulse.policy_version,
        mode=pulse.mode,
        mode_reason=pulse.mode_reason[:MODE_REASON_MAX] if pulse.mode_reason else None,
        last_scan_at=pulse.last_scan_at,
        circuit_state="open" if pulse.circuit_open else "closed",
        counters=counters(
            scans=pulse.scans,
            scan_errors=pulse.scan_errors,
            findings=pulse.violations,
            kills=pulse.stops,
            dropped_events=uploader.dropped_total(),
            rejected_events=uploader.rejected_count(),
            queue_pending=pending,
            policy_rejections=policy_rejections() if policy_rejections else None,
            **(extra_counters() if extra_counters else {}),  # e.g. the exec gate's state
        ),
    )


def report_tick_seconds(settings: AgentSettings) -> float:
    return min(1.0, settings.upload_interval)


def build_report_job(
    settings: AgentSettings,
    *,
    store: ViolationStore,
    client: ReportClient,
    pulse: Callable[[], AgentPulse],
    policy_rejections: Callable[[], int] | None = None,
    extra_counters: Callable[[], Mapping[str, int]] | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> ReportJob:
    clock = clock or SystemClock()
    rng = rng or random.SystemRandom()
    limits = StoreLimits(settings.store_max_events, settings.store_max_bytes, settings.store_min_free_bytes)
    uploader = Uploader(store, client, clock=clock, limits=limits)
    schedule = ReportSchedule(settings.upload_interval, clock=clock, rng=rng)
    return ReportJob(
        uploader,
        client,
        heartbeat=lambda: agent_heartbeat(
            pulse(), store, uploader, policy_rejections=policy_rejections, extra_counters=extra_counters
        ),
        schedule=schedule,
        clock=clock,
    )


__all__ = ["ReportClient", "agent_heartbeat", "build_report_job", "report_tick_seconds"]
