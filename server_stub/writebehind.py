"""`last_seen` and heartbeats written behind: kept in memory, flushed in batches every ~2 s.

A request from a host only notes the time here; a heartbeat only stores its content here. A
background thread writes everything noted since the last flush in a few batched statements (a
host whose last contact was its heartbeat is written once, by the heartbeat's row)
(server_stub/store/hosts.py touch_many/heartbeat_many; on PostgreSQL one statement of arrays per
batch: ~25 us of this process's CPU per host written, half of an executemany), and the server
flushes once more on the way out. A listing of hosts in this process (/hosts, the console,
/metrics) flushes first (HostRepo.before_read), so it shows what this process was told; the
database, and so every other process sharing it, sees a host's last contact and last heartbeat
at most FLUSH_INTERVAL plus one flush late. A crash (not a stop) loses at most that much. Memory
holds at most one entry per enrolled host that called, whatever the rate. A failed flush keeps
its entries for the next one.
"""

from __future__ import annotations

import threading
from datetime import datetime

from endpoint_contract.heartbeat import Heartbeat
from server_stub.periodic import Periodic
from server_stub.store import HostRepo

FLUSH_INTERVAL = 2.0


class HostActivity:
    def __init__(self, hosts: HostRepo, interval: float = FLUSH_INTERVAL) -> None:
        self._hosts = hosts
        self._lock = threading.Lock()
        self._seen: dict[str, datetime] = {}
        self._beats: dict[str, tuple[Heartbeat, datetime]] = {}
        self._flush_lock = threading.Lock()  # one flush at a time (the thread, or the final one)
        self._thread = Periodic("host-activity-flush", interval, self.flush)

    def seen(self, host_id: str, at: datetime) -> None:
        with self._lock:
            self._seen[host_id] = at

    def heartbeat(self, host_id: str, beat: Heartbeat, at: datetime) -> None:
        with self._lock:
            self._beats[host_id] = (beat, at)
            self._seen[host_id] = at

    def pending(self) -> int:
        return len(self._seen)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then flush what is left (the server is on its way out)."""
        self._thread.stop()
        self.flush()

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                seen, self._seen = self._seen, {}
                beats, self._beats = self._beats, {}
            for host_id, (_beat, at) in beats.items():
                if seen.get(host_id) == at:
                    del seen[host_id]  # its heartbeat's row sets last_seen too: not written twice
            try:
                if beats:
                    self._hosts.heartbeat_many([(h, beat, at) for h, (beat, at) in beats.items()])
                    beats = {}
                if seen:
                    self._hosts.touch_many(seen)
            except BaseException:
                self._keep(seen, beats)
                raise

    def _keep(self, seen: dict[str, datetime], beats: dict[str, tuple[Heartbeat, datetime]]) -> None:
        """Put back what a failed flush did not write; anything noted since is newer and wins."""
        with self._lock:
            for host_id, at in seen.items():
                self._seen.setdefault(host_id, at)
            for host_id, entry in beats.items():
                self._beats.setdefault(host_id, entry)
