"""What never changes while one process instance runs one program, read once and reused.

A scan used to re-read, for every process, its executable, command line, owner and the
SHA-256 of its binary. None of these can change while the same instance runs the same
program, so `ProcessCache` keeps them per instance and a scan re-reads only /proc/<pid>/stat
(collect.proc_stat) to confirm that the record still applies:

* Instance: (pid, start_ticks). A PID reused by a new process has another start time, so
  its old record is dropped, never confused with the new process.
* Program: the memory layout in stat (`ProcStat.image`) changes on every exec, so a shell's
  child recorded between fork and exec is read again once it runs the real program. Where
  the layout is hidden (not root) a change of `comm` is taken as an exec instead.
* Owner: uid/username are those the process had when examined; a process that drops
  privileges without exec keeps its first owner until it execs (privilege drops happen in
  system daemons, which policies do not target by user).

Records whose reading was incomplete (`partial`: access denied, zombie, binary unreadable)
are read again on the next `MAX_ATTEMPTS - 1` scans before being kept as they are.

Bounded: a record lives only while its process does. `forget(pid)` drops it on an exit event,
`retain(pids)` drops every record whose PID a scan no longer lists, and a hard cap
(`max_entries`, oldest first) holds even if neither is called. Not thread-safe: the collector
that owns a cache serialises access to it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from endpoint_agent.collect.proc_stat import ProcStat
from endpoint_agent.types import ProcessInfo

DEFAULT_MAX_ENTRIES = 32768
MAX_ATTEMPTS = 3


@dataclass(slots=True)
class CachedProcess:
    """The immutable attributes of one process instance running one program."""

    pid: int
    start_ticks: int
    image: tuple[int, ...]
    comm: str
    exe: str | None
    cmdline: tuple[str, ...]
    username: str | None
    uid: int | None
    sha256: str | None
    package: str | None
    kernel_thread: bool
    partial: bool
    attempts: int = 1
    # The record the last scan built from this entry; reused while ppid/name/parent/boot time hold.
    info: ProcessInfo | None = None
    netns: str | None = None  # its network namespace when last read (kept while events track it)

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)

    @property
    def retry_due(self) -> bool:
        """Incomplete and not yet read MAX_ATTEMPTS times: worth reading again."""
        return self.partial and self.attempts < MAX_ATTEMPTS


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    reused_pids: int = 0  # a PID now belongs to another instance
    execs: int = 0  # the same instance runs another program
    dropped: int = 0  # processes gone (exit events, absent from a scan)
    evicted: int = 0  # over the cap


@dataclass
class ProcessCache:
    max_entries: int = DEFAULT_MAX_ENTRIES
    stats: CacheStats = field(default_factory=CacheStats)
    _entries: dict[int, CachedProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ValueError("max_entries must be >= 1")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: object) -> bool:
        return pid in self._entries

    def get(self, pid: int) -> CachedProcess | None:
        """The entry of `pid` without any check (tests and diagnostics)."""
        return self._entries.get(pid)

    def lookup(self, stat: ProcStat) -> CachedProcess | None:
        """The record of the instance `stat` describes, still running the program it was read for.

        None when there is none; a record of an earlier instance of the PID, or of the same
        instance before an exec, is dropped on the way.
        """
        entry = self._entries.get(stat.pid)
        if entry is None:
            self.stats.misses += 1
            return None
        if entry.start_ticks != stat.start_ticks:
            self.stats.reused_pids += 1
        elif _same_program(entry, stat):
            self.stats.hits += 1
            return entry
        else:
            self.stats.execs += 1
        del self._entries[stat.pid]
        self.stats.misses += 1
        return None

    def store(self, entry: CachedProcess, previous: CachedProcess | None = None) -> None:
        """Remember `entry`; `previous` is the record it re-reads (its attempts carry over)."""
        if previous is not None and previous.key == entry.key and previous.image == entry.image:
            entry.attempts = previous.attempts + 1
        self._entries.pop(entry.pid, None)  # re-inserted last: the cap evicts the oldest first
        self._entries[entry.pid] = entry
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
            self.stats.evicted += 1

    def forget(self, pid: int) -> bool:
        """Drop the record of `pid` (its process exited); True when there was one."""
        if self._entries.pop(pid, None) is None:
            return False
        self.stats.dropped += 1
        return True

    def retain(self, pids: Collection[int]) -> int:
        """Drop the records of every PID not in `pids` (the processes a scan saw); how many."""
        gone = [pid for pid in self._entries if pid not in pids]
        for pid in gone:
            del self._entries[pid]
        self.stats.dropped += len(gone)
        return len(gone)


def same_program(entry: CachedProcess, stat: ProcStat) -> bool:
    """Whether `stat` shows the instance and program `entry` was read for (no PID reuse, no exec)."""
    return entry.start_ticks == stat.start_ticks and _same_program(entry, stat)


def _same_program(entry: CachedProcess, stat: ProcStat) -> bool:
    if stat.image_known or any(entry.image):
        return entry.image == stat.image
    return entry.comm == stat.comm  # layout hidden from us: a new name is the best sign of an exec


__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "MAX_ATTEMPTS",
    "CacheStats",
    "CachedProcess",
    "ProcessCache",
    "same_program",
]
