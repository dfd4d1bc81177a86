"""Which PIDs can belong to processes started since the last look, without listing /proc each time.

Why: while exec and exit events keep the tracked processes current, a scan only needs the
processes nobody announced (a fork without exec: the kernel filter drops fork events). Listing
/proc finds them but costs about a microsecond of kernel time per process on every scan, the
one cost of an idle scan that grows with the machine. Two counters say where to look instead:

* `processes` in /proc/stat counts every task (process or thread) created since boot: unchanged,
  nothing can have started;
* the last PID allocated (the 5th field of /proc/loadavg): the kernel hands out PIDs cyclically
  from there, so every task created since the last look holds a PID in the range between the
  two readings (after pid_max it wraps to RESERVED_PIDS, 300).

So `look()` answers with the PIDs of that range (`Probe`), which the caller reads one by one
(a thread reads as one: ProcStat.thread), or, when the range cannot be trusted or is not
cheaper than a listing -- the first look, a counter unreadable (a fake /proc, another OS), more
new tasks than `bound` (a quarter of the tracked processes, at least 64), a cycle through all
PIDs possible -- with one listing of /proc (`Listing`). A PID allocated just before the reading
but not yet visible in /proc (fork attaches it a few microseconds later) is probed again at the
next look (`absent`). PIDs set explicitly (clone3 set_tid, ns_last_pid: checkpoint/restore) are
outside any range: the caller lists /proc now and then anyway (`Listing` when asked to).
"""

from __future__ import annotations

from dataclasses import dataclass

from endpoint_agent.collect.proc_stat import list_pids

RESERVED_PIDS = 300  # where allocation wraps to after pid_max (kernel/pid.c)
MIN_BOUND = 64


@dataclass(frozen=True, slots=True)
class Marks:
    forks: int  # tasks created since boot (/proc/stat `processes`)
    last_pid: int  # the PID allocated last (/proc/loadavg)
    tasks: int  # tasks that exist now (/proc/loadavg)


@dataclass(frozen=True, slots=True)
class Probe:
    """Every new process has one of these PIDs (threads and vanished PIDs too)."""

    pids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Listing:
    """Every process now (one listing of /proc).

    `expected`: when the listing was asked for although a range was usable, the PIDs that range
    (and the absent ones) held; a new process outside them is one the probes would have missed.
    """

    pids: frozenset[int]
    expected: frozenset[int] | None = None


def read_marks(proc_root: str = "/proc") -> Marks | None:
    """The kernel's fork counter and last PID; None when either cannot be read."""
    try:
        with open(f"{proc_root}/loadavg", "rb") as f:
            fields = f.read(256).split()
        running = fields[3].split(b"/")
        last_pid, tasks = int(fields[4]), int(running[1])
        forks = None
        with open(f"{proc_root}/stat", "rb") as f:
            for line in f:
                if line.startswith(b"processes "):
                    forks = int(line.split()[1])
                    break
    except (OSError, IndexError, ValueError):
        return None
    return None if forks is None else Marks(forks, last_pid, tasks)


def read_pid_max(proc_root: str = "/proc") -> int | None:
    try:
        with open(f"{proc_root}/sys/kernel/pid_max", "rb") as f:
            return int(f.read(64))
    except (OSError, ValueError):
        return None


def pid_range(after: int, last: int, pid_max: int) -> range | tuple[range, range]:
    """The PIDs allocated after `after` up to `last`, in allocation order (wrapping at pid_max)."""
    if last >= after:
        return range(after + 1, last + 1)
    return (range(after + 1, pid_max), range(RESERVED_PIDS, last + 1))


class NewPids:
    """Where to look for processes started since the last `look()`; one per tracking collector."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._proc = proc_root
        self._marks: Marks | None = None
        self._pid_max: int | None = None
        self.absent: set[int] = set()  # probed but not (yet) in /proc: looked at once more
        self._carried: set[int] = set()  # the last look's `absent`: not carried again
        self.probes = 0  # looks answered by a range (for status and tests)
        self.listings = 0

    def mark(self) -> None:
        """Remember the counters now (a full walk is about to list /proc): the next look starts here."""
        self._marks = read_marks(self._proc)
        self._carried = self.absent = set()

    def look(self, tracked: int, *, listing: bool = False) -> Probe | Listing:
        """`tracked`: how many processes the caller keeps (the bound); `listing`: list /proc anyway."""
        listed = frozenset(list_pids(proc_root=self._proc)) if listing else None  # before the marks
        self._pid_max = read_pid_max(self._proc)  # it can be changed at run time
        marks = read_marks(self._proc)
        previous, self._marks = self._marks, marks
        self._carried, self.absent = self.absent, set()
        pids = None
        if marks is not None and previous is not None and self._pid_max is not None:
            pids = self._range(previous, marks, max(MIN_BOUND, tracked // 4))
        if listed is not None:
            self.listings += 1
            return Listing(listed, None if pids is None else frozenset(pids | self._carried))
        if pids is not None:
            self.probes += 1
            return Probe(frozenset(pids | self._carried))
        self.listings += 1
        return Listing(frozenset(list_pids(proc_root=self._proc)))

    def missing(self, pids: set[int]) -> None:
        """Probed PIDs /proc did not show: looked at once more next time (fork attaches a PID late)."""
        self.absent = pids - self._carried

    def _range(self, previous: Marks, now: Marks, bound: int) -> set[int] | None:
        forks = now.forks - previous.forks
        assert self._pid_max is not None
        if forks == 0:
            return set()
        # More than `bound` new tasks: a listing is cheaper. A cursor that may have gone all the
        # way round (it skips PIDs in use) would make the range a lie.
        if forks < 0 or forks > bound or forks + now.tasks >= self._pid_max - RESERVED_PIDS:
            return None
        if not 0 < now.last_pid < self._pid_max or now.last_pid == previous.last_pid:
            return None
        span = pid_range(previous.last_pid, now.last_pid, self._pid_max)
        ranges = span if isinstance(span, tuple) else (span,)
        if sum(len(r) for r in ranges) > 4 * bound:  # PIDs in use were skipped: still worth it?
            return None
        return set().union(*ranges)


__all__ = ["RESERVED_PIDS", "Listing", "Marks", "NewPids", "Probe", "pid_range", "read_marks", "read_pid_max"]
