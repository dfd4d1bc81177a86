"""/proc/<pid>/stat: what a scan re-reads about every process, in one small read.

Why: an incremental scan must tell, cheaply and for every process, (1) whether a PID is still
the same process instance, (2) whether that instance has exec'd another program since it was
last examined, and (3) what changes without an exec (parent, name). One read of this file
answers all three:

* `start_ticks` (field 22) is the start time in clock ticks since boot: a reused PID has
  another one. It is the exact integer behind psutil's `create_time()`, which is
  `start_ticks / CLK_TCK + boot time` (see `create_time`).
* `image` is the memory layout of the running program: start/end of code, start of stack,
  and the bounds of argv and environ (fields 26-28, 48-51). exec() builds a new layout
  (and, with ASLR, new random addresses), so any exec -- even of the same binary with other
  arguments -- changes it; nothing else does, except prctl(PR_SET_MM) (which rewrites argv:
  re-reading then is right too). The kernel shows these fields only to a reader allowed to
  ptrace the process (root); otherwise they read 0 and only the exec events (and `comm`)
  reveal an exec.
* `comm`, `ppid`, `state` and the task `flags` (PF_KTHREAD) are read fresh every time.
* `exit_signal` (field 38) is -1 for a thread that is not its group's leader (CLONE_THREAD):
  /proc/<tid> opens for any thread although /proc lists leaders only, so a reader that probes
  PIDs one by one (collect.new_pids) tells threads from processes by it.

Nothing here raises for a vanished or unreadable process: `read_stat` returns None.
"""

from __future__ import annotations

import operator
import os
import sys
from dataclasses import dataclass

# Linux task flag set on kernel threads only (include/linux/sched.h).
PF_KTHREAD = 0x00200000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_ENCODING = sys.getfilesystemencoding()
_ENCODING_ERRORS = sys.getfilesystemencodeerrors()
# Indexes into the fields after the command name (field 3, the state, is index 0).
_PPID, _FLAGS, _START, _EXIT_SIGNAL = 1, 6, 19, 35
_IMAGE = (23, 24, 25, 45, 46, 47, 48)  # startcode endcode startstack arg_start arg_end env_start env_end
_IMAGE_FIELDS = operator.itemgetter(*_IMAGE)
_READ_SIZE = 4096  # the line is < 1 KB; comm is at most 64 bytes


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str  # the kernel's process name (at most 15 characters for user processes)
    state: str  # R, S, D, Z, T, ...
    ppid: int
    flags: int
    start_ticks: int
    image: tuple[int, ...]  # all zeros when the kernel hides the layout from this reader
    exit_signal: int = 0  # -1: a thread, not a process (its group's leader)

    @property
    def thread(self) -> bool:
        """A non-leader thread (read through /proc/<tid>, which /proc does not list)."""
        return self.exit_signal == -1

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    @property
    def image_known(self) -> bool:
        return any(self.image)


def parse_stat(pid: int, data: bytes) -> ProcStat | None:
    """Decode the content of /proc/<pid>/stat; None when it is not such a line."""
    # comm may hold spaces and parentheses: it runs from the first "(" to the last ")".
    left = data.find(b"(")
    right = data.rfind(b")")
    if left < 0 or right < left:
        return None
    fields = data[right + 2 :].split()
    try:
        if len(fields) > _IMAGE[-1]:
            image = tuple(map(int, _IMAGE_FIELDS(fields)))  # one C call: every scan parses many lines
        else:  # an older kernel's shorter line
            image = tuple(int(fields[i]) if i < len(fields) else 0 for i in _IMAGE)
        return ProcStat(
            pid=pid,
            comm=data[left + 1 : right].decode(_ENCODING, _ENCODING_ERRORS),
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[_PPID]),
            flags=int(fields[_FLAGS]),
            start_ticks=int(fields[_START]),
            image=image,
            exit_signal=int(fields[_EXIT_SIGNAL]) if len(fields) > _EXIT_SIGNAL else 0,
        )
    except (IndexError, ValueError):
        return None


def read_stat(pid: int, *, proc_root: str = "/proc") -> ProcStat | None:
    """The stat line of `pid`; None when it vanished, is denied, or is not parseable."""
    try:
        fd = os.open(f"{proc_root}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _READ_SIZE)
    except OSError:  # ESRCH: exited between open and read
        return None
    finally:
        os.close(fd)
    return parse_stat(pid, data)


def list_pids(*, proc_root: str = "/proc") -> list[int]:
    """The PIDs of all processes (thread-group leaders), ascending; [] when /proc is unreadable."""
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def boot_time(*, proc_root: str = "/proc") -> float | None:
    """Boot time in seconds since the epoch, as psutil reads it (btime in /proc/stat)."""
    try:
        with open(f"{proc_root}/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def create_time(start_ticks: int, boot: float) -> float:
    """psutil's create_time() for a process that started `start_ticks` after a boot at `boot`."""
    return float(start_ticks) / CLOCK_TICKS + boot


__all__ = [
    "CLOCK_TICKS",
    "PF_KTHREAD",
    "ProcStat",
    "boot_time",
    "create_time",
    "list_pids",
    "parse_stat",
    "read_stat",
]
