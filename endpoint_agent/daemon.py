"""The service process (`endpoint-agent run`): the service's jobs on a scheduler, until SIGTERM/SIGINT.

    run_service(settings) -> exit code

- One instance per state dir (so per machine with the default one): an exclusive `flock` on
  STATE_DIR/agent.lock, released by the kernel even after kill -9.
- The parts are built once by endpoint_agent/service/ (`build_service`); their jobs run on an
  APScheduler BackgroundScheduler: `scan` every `scan_interval` (first run at once), then each
  registered part's. Each job is wrapped so a failure is logged with its traceback and the next
  run goes ahead; max_instances=1 and coalesce=True, so a slow run is never stacked or replayed.
- After each scan, STATE_DIR/status.json is replaced atomically; `endpoint-agent status` reads it.
- Logs go to stderr (the journal under systemd) as text or JSON lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO

from endpoint_agent import __version__
from endpoint_agent.errors import AgentError, SettingsError
from endpoint_agent.lockfile import foreign_holders, open_lock_file, replace_lock_file
from endpoint_agent.logfmt import JsonLineFormatter, TextLineFormatter
from endpoint_agent.service import JobSpec, Service, build_service, guarded
from endpoint_agent.settings import AgentSettings

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
    # -- policy sync: httpx logs every request at INFO; its warnings still show --
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


# -- the scheduler ---------------------------------------------------------------------------


def run_jobs(stop: threading.Event, jobs: Sequence[JobSpec], *, on_state: Callable[[str], None]) -> None:
    """Run `jobs` on an APScheduler thread pool until `stop` is set, then each job's `at_shutdown`.

    `on_state("running")` is called before the first job, `on_state("stopped")` after the last.
    """
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=4)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )
    for job in jobs:
        # APScheduler 3 adds a job whose next_run_time is None *paused*: a job that does not run at
        # start gets its first run one interval from now instead.
        first = datetime.now(UTC)
        if not job.run_at_start:
            first += timedelta(seconds=job.interval_seconds)
        scheduler.add_job(
            guarded(job.name, job.func),
            "interval",
            seconds=job.interval_seconds,
            id=job.name,
            name=job.name,
            next_run_time=first,
        )
    on_state("running")
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
        on_state("stopped")


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
    service: Service | None = None
    try:
        service = build_service(settings)
        stop = threading.Event()
        started = time.monotonic()
        with _stop_on_signals(stop):
            run_jobs(stop, service.jobs(), on_state=service.write_status)
        service.drain(timeout=min(settings.notify_timeout_seconds, 5.0))
        logger.info("stopped cleanly after %.0fs", time.monotonic() - started)
        return 0
    finally:
        if service is not None:
            service.close()
        lock.release()


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
    "JsonLineFormatter",
    "configure_logging",
    "run_jobs",
    "run_service",
]
