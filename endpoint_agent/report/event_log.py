"""The agent's local event log (`run --event-log FILE`): every recorded violation as an OCSF JSON line.

For machines without the server, or beside it: the same OCSF 1.3 Detection Findings the server's file
export writes (endpoint_contract/ocsf.py), appended to FILE (mode 0600, never through a symlink) and
rotated by size (FILE.1 ... FILE.N). It listens to the violation store, so it sees exactly what was
recorded -- by a scan, the exec gate or the DNS filter -- once the record is durable. A log that
cannot be written never stops recording: the failure is logged (once a minute at most) and counted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from endpoint_agent import __version__
from endpoint_agent.report.jsonlines import RotatingJsonLines
from endpoint_agent.report.store import NewEvent
from endpoint_contract.ocsf import detection_finding

log = logging.getLogger(__name__)
_WARN_EVERY = 60.0


class EventLog:
    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self._file = RotatingJsonLines(path, max_bytes, backups)
        self._lock = threading.Lock()
        self.written = 0
        self.failed = 0
        self._warned_at = 0.0

    def record(self, events: Sequence[NewEvent]) -> None:
        """Listener of the violation store: append the violations among `events` (never raises)."""
        lines = [
            json.dumps(detection_finding(e.payload, product_version=__version__), ensure_ascii=False)
            for e in events
            if e.kind == "violation"
        ]
        if not lines:
            return
        with self._lock:
            try:
                self._file.write(lines)
                self.written += len(lines)
            except OSError as exc:
                self._file.close()
                self.failed += len(lines)
                now = time.monotonic()
                if now - self._warned_at >= _WARN_EVERY:
                    self._warned_at = now
                    log.warning("event log %s: %s (%d lines not written so far)", self.path, exc, self.failed)

    def close(self) -> None:
        with self._lock:
            self._file.close()


__all__ = ["EventLog"]
