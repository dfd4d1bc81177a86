"""Who this agent is to the server: a stable machine id, and the node key enrollment bought.

    STATE_DIR/enrollment.json   {"host_id": ..., "node_key": ...}   mode 0600 (the key is a secret)
    STATE_DIR/machine-id        only when /etc/machine-id is missing: a generated id, kept for good

The machine id must not change across restarts: the server maps it to the same host on
re-enrollment, so rollout buckets and the host's history stay put.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from endpoint_agent.errors import StoreError
from endpoint_agent.sync.durable import atomic_write, read_small

logger = logging.getLogger(__name__)

SYSTEM_MACHINE_ID = Path("/etc/machine-id")
ENROLLMENT_FILE = "enrollment.json"
MACHINE_ID_FILE = "machine-id"
_MAX_FILE = 64 * 1024
_MACHINE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,256}$")


@dataclass(frozen=True)
class Enrollment:
    host_id: str
    node_key: str = field(repr=False)


def machine_id(state_dir: Path, system_file: Path | None = SYSTEM_MACHINE_ID) -> str:
    """/etc/machine-id when usable, else an id generated once and persisted in the state dir."""
    if system_file is not None:
        try:
            value = system_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            value = ""
        if _MACHINE_ID.match(value):
            return value
    path = state_dir / MACHINE_ID_FILE
    try:
        raw = read_small(path, _MAX_FILE)
    except StoreError as exc:
        raise StoreError(f"machine id: {exc}") from exc
    if raw is not None:
        value = raw.decode("ascii", "replace").strip()
        if _MACHINE_ID.match(value):
            return value
        logger.warning("%s is not a usable machine id; generating a new one", path)
    value = uuid.uuid4().hex
    atomic_write(path, (value + "\n").encode("ascii"), mode=0o644)
    return value


class EnrollmentFile:
    """The persisted node key; thread-safe (the sync and upload jobs share it)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ENROLLMENT_FILE
        self._lock = threading.Lock()
        self._cached: Enrollment | None = None
        self._loaded = False

    def load(self) -> Enrollment | None:
        with self._lock:
            if not self._loaded:
                self._cached = self._read()
                self._loaded = True
            return self._cached

    def save(self, enrollment: Enrollment) -> None:
        data = json.dumps({"host_id": enrollment.host_id, "node_key": enrollment.node_key}, sort_keys=True)
        with self._lock:
            atomic_write(self.path, (data + "\n").encode("utf-8"), mode=0o600)
            self._cached = enrollment
            self._loaded = True

    def _read(self) -> Enrollment | None:
        raw = read_small(self.path, _MAX_FILE)
        if raw is None:
            return None
        try:
            obj = json.loads(raw)
            host_id, node_key = obj["host_id"], obj["node_key"]
            if not (isinstance(host_id, str) and isinstance(node_key, str) and host_id and node_key):
                raise TypeError("host_id and node_key must be non-empty strings")
        except (ValueError, KeyError, TypeError) as exc:
            # Not fatal: enrolling again yields a fresh key for the same machine id.
            logger.warning("%s is not a valid enrollment (%s); the agent enrolls again", self.path, exc)
            return None
        return Enrollment(host_id, node_key)


__all__ = ["SYSTEM_MACHINE_ID", "Enrollment", "EnrollmentFile", "machine_id"]
