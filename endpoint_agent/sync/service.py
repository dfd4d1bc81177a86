"""Server mode: policy sync wired from the settings, as the agent's PolicyProvider and a poll thread.

    # The last good policy is loaded before any fetch; the dry run uses the service's collector and guard.
    sync = build_policy_sync(settings, store=store, snapshot=collector.snapshot, guard=guard)
    agent = Agent(policy=sync, ...)                   # wired by endpoint_agent/service/
    sync.ensure_running()                             # the poll thread (the daemon's watchdog job)
    ...
    sync.stop()

Polling runs in its own thread rather than as a scheduler job: a fetch may wait for a slow
server for up to the client timeout, and the schedule (jitter, backoff, Retry-After) decides
every next delay itself. The daemon's `policy-sync` job only restarts the thread if it ever died.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.decide import ProtectionCheck
from endpoint_agent.errors import PolicyLoadError, SettingsError
from endpoint_agent.policy import ActivePolicy
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.settings import AgentSettings
from endpoint_agent.sync.client import DEFAULT_TIMEOUT, HttpServerClient
from endpoint_agent.sync.events import StoreEventSink
from endpoint_agent.sync.identity import SYSTEM_MACHINE_ID, EnrollmentFile, machine_id
from endpoint_agent.sync.policy_sync import DEFAULT_FLEET_ID, PolicySync, PollOutcome
from endpoint_agent.sync.safety import DryRun, SnapshotFn
from endpoint_agent.sync.schedule import PollLoop, PollSchedule
from endpoint_agent.sync.state import PolicyStateStore
from endpoint_contract.envelope import load_public_key

logger = logging.getLogger(__name__)

WATCHDOG_SECONDS = 30.0


class PolicySyncService:
    def __init__(self, sync: PolicySync, schedule: PollSchedule, client: HttpServerClient) -> None:
        self.sync = sync
        self._loop = PollLoop(self.poll, schedule)
        self._client = client
        # Called (in the poll thread) after a new policy was activated: the daemon scans at once,
        # so a new policy applies to what already runs now, not at the next full scan (up to 30 s).
        self.on_activated: Callable[[], object] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.watchdog_seconds = WATCHDOG_SECONDS

    def current(self) -> ActivePolicy | None:
        return self.sync.current()

    def poll(self) -> PollOutcome:
        outcome = self.sync.poll()
        if outcome == "activated" and self.on_activated is not None:
            try:
                self.on_activated()
            except Exception:  # the scan job logs its own failures; the poll loop must go on
                logger.exception("scan after activating a new policy failed")
        return outcome

    # -- report: the upload/heartbeat job shares this client (one enrollment, one node key) --
    @property
    def client(self) -> HttpServerClient:
        return self._client

    def ensure_running(self) -> None:
        """Start the poll thread, or restart it if it died (it is not meant to)."""
        with self._lock:
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            if self._thread is not None:
                logger.error("the policy sync thread had stopped; starting it again")
            self._thread = threading.Thread(
                target=self._loop.run, args=(self._stop,), name="policy-sync", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = DEFAULT_TIMEOUT + 5) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("the policy sync thread did not stop within %.0fs", timeout)
                return  # it still uses the client
        self._client.close()

    def status(self) -> dict[str, object]:
        schedule = self._loop.schedule
        return {
            **self.sync.status(),
            "sync_interval": schedule.interval,
            "consecutive_failures": schedule.failures,
            "next_poll_in_seconds": round(schedule.seconds_until_due(), 1),
        }


def _trusted_keys(settings: AgentSettings) -> list[Ed25519PublicKey]:
    keys = []
    for path in settings.public_keys:
        try:
            keys.append(load_public_key(path))
        except PolicyLoadError as exc:
            raise SettingsError(f"invalid setting public_keys: {exc}") from exc
    if not keys:
        raise SettingsError(
            "invalid setting public_keys: server mode needs at least one trusted policy-signing key "
            "(--public-key FILE)"
        )
    return keys


def build_policy_sync(
    settings: AgentSettings,
    *,
    store: ViolationStore,
    snapshot: SnapshotFn,
    guard: ProtectionCheck,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    system_machine_id: Path | None = SYSTEM_MACHINE_ID,
) -> PolicySyncService:
    """Everything server mode needs, validated; the last good policy is loaded before this returns.

    The safety dry run judges a new policy with `snapshot` and `guard`: the service's own
    collector (every network namespace) and the guard enforcement will use.
    """
    if settings.server is None:
        raise SettingsError("invalid setting server: policy sync needs --server URL")
    clock = clock or SystemClock()
    keys = _trusted_keys(settings)
    enrollment = EnrollmentFile(settings.state_dir)
    secret = settings.enroll_secret.get_secret_value() if settings.enroll_secret else None
    if not secret and enrollment.load() is None:
        raise SettingsError(
            "invalid setting enroll_secret: needed to enroll with the server "
            "(--enroll-secret-file FILE, or ENDPOINT_AGENT_ENROLL_SECRET)"
        )
    state_dir = settings.state_dir
    client = HttpServerClient(
        settings.server,
        enrollment=enrollment,
        enroll_secret=secret,
        machine_id=lambda: machine_id(state_dir, system_machine_id),
        clock=clock,
        ca_bundle=settings.ca_bundle,
    )
    sync = PolicySync(
        client=client,
        keys=keys,
        fleet_id=settings.fleet_id or DEFAULT_FLEET_ID,
        store=PolicyStateStore(state_dir),
        dry_run=DryRun(snapshot, guard, max_share=settings.unsafe_kill_share),
        events=StoreEventSink(store, clock),
        clock=clock,
    )
    sync.load_last_good()
    schedule = PollSchedule(settings.sync_interval, clock=clock, rng=rng or random.SystemRandom())
    return PolicySyncService(sync, schedule, client)


__all__ = ["WATCHDOG_SECONDS", "PolicySyncService", "build_policy_sync"]
