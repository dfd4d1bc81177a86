"""A daemon thread that calls a function every `interval` seconds until stopped.

`name_os_thread()`, called first in a background thread, gives the kernel its name too, so that
per-thread CPU (/proc/<pid>/task/*/comm, `top -H`, bench fleet's server-threads line) says
which thread used it.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections.abc import Callable

from endpoint_agent.errors import StoreError

log = logging.getLogger(__name__)
_PR_SET_NAME = 15


def name_os_thread() -> None:
    """The calling thread's name (its first 15 bytes, the kernel's limit) given to the kernel;
    nothing where that is not Linux or not possible."""
    if not sys.platform.startswith("linux"):
        return
    try:
        name = threading.current_thread().name.encode("utf-8", "replace")[:15]
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):
        return


class Periodic:
    def __init__(self, name: str, interval: float, tick: Callable[[], None]) -> None:
        self._name, self._interval, self._tick = name, interval, tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        name_os_thread()
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except StoreError as exc:
                if not self._failing:  # one line per outage, not one per second
                    log.warning("%s: %s (retrying every %g s)", self._name, exc, self._interval)
                self._failing = True
                continue
            except Exception:  # a bug here must not end the thread silently
                log.exception("%s failed", self._name)
                continue
            if self._failing:
                log.warning("%s: database reachable again", self._name)
            self._failing = False
