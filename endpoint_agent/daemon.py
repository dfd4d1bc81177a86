"""The service (`endpoint-agent run`): scheduled jobs around one `Agent`, until SIGTERM/SIGINT.

    run_service(settings) -> exit code

- One instance per state dir (so per machine with the default one): an exclusive `flock` on
  STATE_DIR/agent.lock, released by the kernel even after kill -9.
- Jobs run on an APScheduler BackgroundScheduler: `scan` every `scan_interval` (first run at
  once). Each job is wrapped so a failure is logged with its traceback and the next run goes
  ahead; max_instances=1 and coalesce=True, so a slow run is never stacked or replayed.
  Later parts (policy sync, upload, heartbeat) add a `JobSpec` in `service_jobs()`.
- After each scan, STATE_DIR/status.json is replaced atomically; `endpoint-agent status` reads it.
- Logs go to stderr (the journal under systemd) as text or JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import psutil

from endpoint_agent import __version__
from endpoint_agent.agent import Agent, FilePolicyProvider, PolicyProvider, build_agent
from endpoint_agent.errors import AgentError, SettingsError
from endpoint_agent.lockfile import foreign_holders, open_lock_file, replace_lock_file
from endpoint_agent.logfmt import JsonLineFormatter, TextLineFormatter
from endpoint_agent.report.event_log import EventLog
from endpoint_agent.report.salvage import requeue_damaged
from endpoint_agent.report.store import StoreCorrupt, StoreLimits, ViolationStore
from endpoint_agent.settings import AgentSettings
from endpoint_contract.timestamps import iso_utc

if TYPE_CHECKING:
    from endpoint_agent.dns.service import NetGuard  # DNS filter and connection blocking
    from endpoint_agent.gate.service import ExecGate  # exec gate
    from endpoint_agent.report.job import ReportJob  # report (issue 5)
    from endpoint_agent.sync.service import PolicySyncService  # policy sync (issue 4)
    from endpoint_agent.watch import ExecWatcher  # event-driven reaction (issue 7)

logger = logging.getLogger(__name__)


class AlreadyRunning(AgentError):
    pass


# -- logging ---------------------------------------------------------------------------------


def configure_logging(settings: AgentSettings, stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(TextLineFormatter())  # user-chosen names cannot forge a line
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # APScheduler logs every job run at INFO; its warnings (skipped runs) and errors still show.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    # -- policy sync (issue 4): httpx logs every request at INFO; its warnings still show --
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


# -- single instance -------------------------------------------------------------------------


class InstanceLock:
    """An exclusive lock on a file under the state dir, held for the life of the service."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = open_lock_file(self._path)  # 0600, O_NOFOLLOW: no other user can hold it (lockfile.py)
        except OSError as exc:
            raise SettingsError(f"state_dir: cannot create lock file {self._path}: {exc.strerror}") from exc
        try:
            _lock_exclusive(fd)
        except BlockingIOError:
            fd = self._take_over(fd)
        except OSError as exc:
            os.close(fd)
            raise SettingsError(f"state_dir: cannot lock {self._path}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _take_over(self, fd: int) -> int:
        """The lock is busy: an agent of ours holds it (AlreadyRunning), or only other users do."""
        holders = foreign_holders(fd)
        if holders is None:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise AlreadyRunning(f"another agent is already running{who} with state dir {self._path.parent}")
        os.close(fd)
        logger.warning("lock %s held by other users' processes %s: replaced", self._path, holders)
        try:
            fd = replace_lock_file(self._path)
            _lock_exclusive(fd)  # a fresh 0600 file only this user can open
        except OSError as exc:
            raise SettingsError(f"state_dir: cannot replace lock file {self._path}: {exc.strerror}") from exc
        return fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _lock_exclusive(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from exc
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0) if hasattr(os, "pread") else b""
        return int(raw.decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


# -- status.json -----------------------------------------------------------------------------


def write_status(path: Path, data: dict[str, object]) -> None:
    """Replace the file atomically: a reader sees the old or the new status, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # status is not secret; `endpoint-agent status` may run unprivileged
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _process_identity() -> dict[str, object]:
    try:
        create_time: float | None = psutil.Process().create_time()
    except psutil.Error:
        create_time = None
    return {"pid": os.getpid(), "process_create_time": create_time}


# -- jobs and the service --------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    name: str
    func: Callable[[], None]
    interval_seconds: float
    run_at_start: bool = True
    # Runs once after the scheduler stopped (e.g. a final upload); failures are logged, not raised.
    at_shutdown: Callable[[], None] | None = None


def guarded(name: str, func: Callable[[], None]) -> Callable[[], None]:
    """A job that never dies of one bad run (the scheduler would log it less usefully)."""

    def run() -> None:
        try:
            func()
        except Exception:
            logger.exception("job %s failed; the next run goes ahead", name)

    return run


def build_policy_provider(settings: AgentSettings, store: ViolationStore | None = None) -> PolicyProvider:
    """Standalone mode reads --policy FILE; server mode syncs signed policies (it records into `store`)."""
    if settings.policy is not None:
        if not settings.policy.is_file():
            raise SettingsError(f"invalid setting policy: {settings.policy}: not found or not a regular file")
        return FilePolicyProvider(settings.policy, load=_policy_loader(settings))
    if settings.server is not None:
        # -- policy sync (issue 4) --
        if store is None:
            raise SettingsError("server mode needs the local store to record policy events")
        from endpoint_agent.sync.service import build_policy_sync

        return build_policy_sync(settings, store=store)
    raise SettingsError("no policy source: give --policy FILE (standalone) or --server URL")


def _policy_loader(settings: AgentSettings) -> Callable[[Path], Any]:
    keys = [str(k) for k in settings.public_keys] or None

    def load(path: Path) -> Any:
        from endpoint_agent.scan import load_policy  # YAML, or a signed envelope when keys are set

        return load_policy(str(path), keys)

    return load


class Service:
    def __init__(self, settings: AgentSettings, agent: Agent) -> None:
        self._settings = settings
        self._agent = agent
        self._identity = _process_identity()
        self.report: ReportJob | None = None  # report (issue 5): upload + heartbeat, in server mode
        self.reaction: ExecWatcher | None = None  # issue 7: exec events between scans (None: polling)
        self.gate: ExecGate | None = None  # exec gate: programs judged before they run (None: off)
        self.netguard: NetGuard | None = None  # DNS filter and nftables table, following the policy

    @property
    def agent(self) -> Agent:
        return self._agent

    @property
    def settings(self) -> AgentSettings:
        return self._settings

    def write_status(self, state: str) -> None:
        data: dict[str, object] = {
            **self._agent.status(),
            **self._identity,
            "state": state,
            "agent_version": __version__,
            "state_dir": str(self._settings.state_dir),
            "scan_interval": self.scan_interval,
            # -- event-driven reaction (issue 7) --
            "process_events": self.reaction.status() if self.reaction is not None else {"mode": "polling"},
            "exec_gate": self.gate.status() if self.gate is not None else {"state": "off"},
            "updated_at": iso_utc(datetime.now(UTC)),
        }
        # -- policy sync (issue 4): polls, 304s, rejections, the active envelope --
        sync = _policy_sync(self._agent)
        if sync is not None:
            data["policy_sync"] = sync.status()
        # -- report (issue 5): how uploads and heartbeats go --
        if self.report is not None:
            data["report"] = self.report.status()
        # -- DNS filter and nftables table --
        if self.netguard is not None:
            data.update(self.netguard.status())
        try:
            write_status(self._settings.status_path, data)
        except OSError as exc:
            logger.error("cannot write %s: %s", self._settings.status_path, exc.strerror or exc)

    @property
    def scan_interval(self) -> float:
        """issue 7: the safety-net interval while exec events drive the reaction, else the polling one."""
        return self._settings.effective_scan_interval(events=self.reaction is not None)

    def scan(self) -> None:
        try:
            self._agent.tick()
        finally:
            last = self._agent.last
            if self.netguard is not None and last is not None:
                self.netguard.update(last.policy, last.mode)  # the filter follows the policy and mode
            self.write_status("running")

    def run(self, stop: threading.Event, jobs: Sequence[JobSpec]) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        for job in jobs:
            scheduler.add_job(
                guarded(job.name, job.func),
                "interval",
                seconds=job.interval_seconds,
                id=job.name,
                name=job.name,
                next_run_time=datetime.now(UTC) if job.run_at_start else None,
            )
        self.write_status("running")
        scheduler.start()
        logger.info(
            "agent %s running (pid %d): jobs %s", __version__, os.getpid(), ", ".join(j.name for j in jobs)
        )
        try:
            while not stop.wait(1.0):
                pass
        finally:
            logger.info("stopping: waiting for running jobs to finish")
            scheduler.shutdown(wait=True)
            for job in jobs:
                if job.at_shutdown is not None:
                    guarded(f"{job.name} (at shutdown)", job.at_shutdown)()
            self.write_status("stopped")


def service_jobs(settings: AgentSettings, service: Service) -> list[JobSpec]:
    """The service's jobs. Policy sync and upload/heartbeat join here (they reach the store as
    `service.agent.store` and the status as `service.agent.status()`)."""
    jobs = [JobSpec("scan", service.scan, service.scan_interval)]
    # -- event-driven reaction (issue 7): the watcher's thread is restarted if it ever died --
    if service.reaction is not None:
        reaction = service.reaction
        jobs.append(
            JobSpec(
                "exec-watcher", reaction.ensure_running, 60.0, run_at_start=False, at_shutdown=reaction.stop
            )
        )
    # -- exec gate: its supervisor restarted if it ever died; status.json kept current --
    if service.gate is not None:
        gate = service.gate

        def gate_job() -> None:
            gate.ensure_running()
            service.write_status("running")

        # run_at_start: APScheduler adds a job without a first run time paused
        jobs.append(JobSpec("exec-gate", gate_job, 5.0, at_shutdown=gate.stop))
    # -- policy sync (issue 4): the poll thread, started at once and restarted if it ever died --
    sync = _policy_sync(service.agent)
    if sync is not None:
        # -- report (issue 5): upload + heartbeat on the sync's client; listed first so that its
        # final flush at shutdown runs before policy sync closes the client --
        from endpoint_agent.report.service import build_report_job, report_tick_seconds

        counters = sync.sync.counters
        report = build_report_job(
            settings,
            service.agent,
            sync.client,
            policy_rejections=lambda: counters["rejected"],
            extra_counters=service.gate.counters if service.gate is not None else None,
        )
        service.report = report
        jobs.append(JobSpec("report", report.tick, report_tick_seconds(settings), at_shutdown=report.flush))
        jobs.append(JobSpec("policy-sync", sync.ensure_running, sync.watchdog_seconds, at_shutdown=sync.stop))
    return jobs


def _policy_sync(agent: Agent) -> PolicySyncService | None:
    provider = getattr(agent, "policy_provider", None)
    if provider is None or isinstance(provider, FilePolicyProvider):
        return None  # standalone mode: the sync modules (httpx, ...) are not even imported
    from endpoint_agent.sync.service import PolicySyncService

    return provider if isinstance(provider, PolicySyncService) else None


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop.set()

    wanted = [signal.SIGTERM, signal.SIGINT]
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def run_service(settings: AgentSettings) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop. Start-up problems raise AgentError (exit 2)."""
    configure_logging(settings)
    _prepare_state_dir(settings.state_dir)
    lock = InstanceLock(settings.lock_path)
    lock.acquire()
    store: ViolationStore | None = None
    service: Service | None = None
    try:
        store = open_store(settings)
        if settings.event_log is not None:
            event_log = EventLog(
                settings.event_log, max_bytes=settings.event_log_max_bytes, backups=settings.event_log_backups
            )
            store.on_commit(event_log.record)
        policy = build_policy_provider(settings, store)  # server mode records policy events in the store
        agent = build_agent(settings, store=store, policy=policy)
        service = Service(settings, agent)
        service.netguard = start_netguard(settings, agent)
        # -- event-driven reaction (issue 7): None where process events are off or unavailable --
        from endpoint_agent.watch import start_reaction

        service.reaction = start_reaction(settings, agent, rescan=service.scan)
        # -- exec gate: None where off; `exec_gate: on` where impossible raises (exit 2) --
        from endpoint_agent.gate.service import start_gate

        service.gate = start_gate(settings, agent)
        sync = _policy_sync(agent)
        if sync is not None:
            sync.on_activated = service.scan  # a new policy applies to what already runs, at once
        stop = threading.Event()
        started = time.monotonic()
        with _stop_on_signals(stop):
            service.run(stop, service_jobs(settings, service))
        agent.close(timeout=min(settings.notify_timeout_seconds, 5.0))
        logger.info("stopped cleanly after %.0fs", time.monotonic() - started)
        return 0
    finally:
        if service is not None and service.reaction is not None:  # issue 7: idempotent
            service.reaction.stop()
        if service is not None and service.gate is not None:  # exec gate: idempotent
            service.gate.stop()
        if service is not None and service.netguard is not None:  # resolver restored, table removed
            service.netguard.stop()
        if store is not None:
            with contextlib.suppress(AgentError):
                store.close()
        lock.release()


def start_netguard(settings: AgentSettings, agent: Agent) -> NetGuard | None:
    """The DNS filter and nftables part (None with `--dns-filter off` and no nft); undoes what a
    killed agent left first. Its connections carry learned domains from the first scan on."""
    from endpoint_agent.clock import SystemClock
    from endpoint_agent.dns.addrmap import AnnotatingSource
    from endpoint_agent.dns.service import NetGuard

    guard = NetGuard(settings, clock=SystemClock(), record=agent.record)
    guard.recover_left_over()
    agent.use_source(AnnotatingSource(agent.source, guard.addresses))
    return guard


def open_store(settings: AgentSettings) -> ViolationStore:
    """A damaged store is kept aside for forensics and replaced: enforcement must not stop over it."""
    limits = StoreLimits(settings.store_max_events, settings.store_max_bytes, settings.store_min_free_bytes)
    path = settings.store_path
    try:
        return ViolationStore.open(path, limits)
    except StoreCorrupt as exc:
        aside = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        logger.error("%s; moved to %s, starting a new store", exc, aside)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        store = ViolationStore.open(path, limits)
        requeue_damaged(store, aside, str(exc))  # what is lost is said: a store_damaged agent event
        return store


def _prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise SettingsError(f"invalid setting state_dir: cannot create {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"invalid setting state_dir: {path} is not writable")


__all__ = [
    "AlreadyRunning",
    "InstanceLock",
    "JobSpec",
    "JsonLineFormatter",
    "Service",
    "build_policy_provider",
    "configure_logging",
    "guarded",
    "open_store",
    "run_service",
    "service_jobs",
    "write_status",
]
