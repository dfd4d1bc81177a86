"""Telling the user why an app was stopped: the rule's message and help URL.

Best effort and never in the way of a scan: `notify()` writes a local log line (always), then
queues a desktop notification that a background thread delivers with a timeout. A full queue
or a dead notification daemon costs one log line, nothing more. The same user is told about
the same rule at most once per `min_interval` (a client that keeps respawning is stopped every
scan; its user does not need a popup every five seconds).

Delivery, with argument lists only (the message comes from a policy; no shell ever sees it):
- Linux: `notify-send` (or `gdbus`) on the user's session bus, /run/user/<uid>/bus; as root via
  `runuser -u USER -- env DBUS_SESSION_BUS_ADDRESS=... notify-send ...`;
- macOS: `osascript` in the user's GUI session (`launchctl asuser UID sudo -u USER` as root);
- Windows: `msg USER`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from endpoint_agent.clock import Clock
from endpoint_agent.display import printable
from endpoint_agent.types import Outcome

logger = logging.getLogger(__name__)

APP_NAME = "Endpoint Agent"
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OSASCRIPT = (
    "-e",
    "on run argv",
    "-e",
    "display notification (item 2 of argv) with title (item 1 of argv)",
    "-e",
    "end run",
)


@dataclass(frozen=True)
class Notification:
    username: str | None
    uid: int | None
    pid: int
    process_name: str
    rule_id: str
    outcome: Outcome
    message: str
    help_url: str | None = None

    # Title and body through display.printable: the process name is whatever the user chose.
    @property
    def title(self) -> str:
        verb = "suspended" if self.outcome is Outcome.SUSPENDED else "stopped"
        if self.outcome is Outcome.DENIED:  # the exec gate: it never ran
            verb = "blocked from starting"
        return f"{printable(self.process_name)} was {verb}"

    @property
    def body(self) -> str:
        text = printable(self.message or "This application is not allowed on this machine.")
        return f"{text}\n{printable(self.help_url)}" if self.help_url else text


def log_notification(n: Notification) -> None:
    """The local record of what the user was (or would have been) told."""
    logger.warning(
        "%s %s (pid %d, user %s) for rule %s: %s%s",
        n.outcome.value,
        n.process_name,
        n.pid,
        n.username or "?",
        n.rule_id,
        n.message,
        f" ({n.help_url})" if n.help_url else "",
    )


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None:
        """Never blocks, never raises."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout` seconds), then stop."""
        ...


class LogOnlyNotifier:
    """`notify: false`: the local log line, no desktop popup."""

    def notify(self, notification: Notification) -> None:
        log_notification(notification)

    def close(self, timeout: float = 5.0) -> None:
        return None


CommandRunner = Callable[[list[str], float], None]
CommandBuilder = Callable[[Notification], "list[str] | None"]


class DesktopNotifier:
    """Logs every notification; shows it on the user's desktop from a background thread."""

    def __init__(
        self,
        *,
        clock: Clock,
        timeout: float = 5.0,
        min_interval: float = 60.0,
        build: CommandBuilder | None = None,
        run: CommandRunner | None = None,
        max_queue: int = 32,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._min_interval = min_interval
        self._build = build or desktop_command
        self._run = run or run_command
        self._queue: queue.Queue[list[str] | None] = queue.Queue(maxsize=max_queue)
        self._last_shown: dict[tuple[str | None, str], float] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.queued = 0
        self.suppressed = 0

    def notify(self, notification: Notification) -> None:
        n = notification
        log_notification(n)
        if not self._due(n):
            self.suppressed += 1
            return
        try:
            argv = self._build(n)
        except Exception:
            logger.exception("cannot build the desktop notification for pid %d", n.pid)
            return
        if argv is None:
            logger.debug("no way to reach user %s's desktop; logged only", n.username)
            return
        try:
            self._queue.put_nowait(argv)
        except queue.Full:
            logger.warning("notification queue full; notification for pid %d logged only", n.pid)
            return
        self.queued += 1
        self._ensure_worker()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        thread.join(timeout)

    def _due(self, n: Notification) -> bool:
        key = (n.username, n.rule_id)
        now = self._clock.monotonic()
        with self._lock:
            if self._closed:
                return False
            last = self._last_shown.get(key)
            if last is not None and now - last < self._min_interval:
                return False
            self._last_shown[key] = now
            return True

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._work, name="notifier", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            argv = self._queue.get()
            if argv is None:
                return
            try:
                self._run(argv, self._timeout)
            except Exception:
                logger.exception("desktop notification failed: %s", argv[0])


def run_command(argv: list[str], timeout: float) -> None:
    """Run a helper with a clean environment (the agent's env may hold secrets) and a hard timeout."""
    env = {"PATH": _SAFE_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a timeout ends the helper and its children
        )
    except OSError as exc:
        logger.warning("cannot run %s: %s", argv[0], exc.strerror or exc)
        return
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        logger.warning("%s did not finish within %gs; killed", argv[0], timeout)
        return
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        logger.warning("%s exited %d%s", argv[0], proc.returncode, f": {detail[0]}" if detail else "")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The group was created by us for this helper (start_new_session) and its leader is unreaped.
    killpg = getattr(os, "killpg", None)
    sigkill = getattr(signal, "SIGKILL", None)
    if killpg is not None and sigkill is not None:
        with contextlib.suppress(OSError):
            killpg(proc.pid, sigkill)
    else:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=2)


def desktop_command(n: Notification) -> list[str] | None:
    if sys.platform.startswith("linux"):
        return linux_command(n, agent_euid=os.geteuid())
    if sys.platform == "darwin":
        return macos_command(n, agent_euid=os.geteuid())
    if sys.platform == "win32":
        return windows_command(n)
    return None


def linux_command(
    n: Notification,
    *,
    agent_euid: int,
    runtime_root: Path = Path("/run/user"),
    which: Callable[[str], str | None] = shutil.which,
) -> list[str] | None:
    if n.uid is None or n.username is None:
        return None
    bus = runtime_root / str(n.uid) / "bus"
    if not bus.exists():
        return None  # no session bus: nobody is logged in graphically
    show = _linux_show(n, which)
    if show is None:
        return None
    env = ["env", f"DBUS_SESSION_BUS_ADDRESS=unix:path={bus}"]
    if agent_euid == n.uid:
        return [*env, *show]
    runuser = which("runuser")
    if agent_euid != 0 or runuser is None:
        return None
    return [runuser, "-u", n.username, "--", *env, *show]


def _linux_show(n: Notification, which: Callable[[str], str | None]) -> list[str] | None:
    # Notification servers may interpret markup in the body; the message is plain text.
    body = n.body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    notify_send = which("notify-send")
    if notify_send is not None:
        return [
            notify_send,
            f"--app-name={APP_NAME}",
            "--urgency=critical",
            "--icon=dialog-warning",
            "--",
            n.title,
            body,
        ]
    gdbus = which("gdbus")
    if gdbus is not None:
        # gdbus parses each argument as GVariant text: JSON string syntax is valid GVariant syntax.
        return [
            gdbus,
            "call",
            "--session",
            "--dest=org.freedesktop.Notifications",
            "--object-path=/org/freedesktop/Notifications",
            "--method=org.freedesktop.Notifications.Notify",
            json.dumps(APP_NAME),
            "0",
            '""',
            json.dumps(n.title),
            json.dumps(body),
            "[]",
            "{}",
            "-1",
        ]
    return None


def macos_command(n: Notification, *, agent_euid: int) -> list[str] | None:
    if n.uid is None or n.username is None:
        return None
    show = ["osascript", *_OSASCRIPT, n.title, n.body]
    if agent_euid == n.uid:
        return show
    if agent_euid != 0:
        return None
    return ["launchctl", "asuser", str(n.uid), "sudo", "-u", n.username, *show]


def windows_command(n: Notification) -> list[str] | None:
    if not n.username:
        return None
    user = n.username.rsplit("\\", 1)[-1]
    return ["msg", user, "/TIME:60", f"{n.title}: {n.body}"]


__all__ = [
    "DesktopNotifier",
    "LogOnlyNotifier",
    "Notification",
    "Notifier",
    "desktop_command",
    "linux_command",
    "log_notification",
    "macos_command",
    "run_command",
    "windows_command",
]
