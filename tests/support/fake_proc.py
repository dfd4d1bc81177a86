"""A fake /proc for the incremental collector: chosen stat lines and what psutil would read.

The one thing a test cannot make the kernel do is reuse a PID; these let a test do it.
"""

from __future__ import annotations

from pathlib import Path

from endpoint_agent.collect.incremental import Details, IncrementalCollector
from endpoint_agent.collect.package_trust import PackageResolver
from endpoint_agent.collect.packages import PackageIndex

FAKE_PID = 9_000_001  # above PID_MAX_LIMIT: no real process has it (its /proc/<pid>/exe never exists)
BOOT = 1_700_000_000
PID_MAX = 10_000_000  # a fake kernel's: the fake PIDs fit below it


class FakeProc:
    """A /proc with chosen stat lines: the one thing a test cannot make the kernel do is reuse a PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "stat").write_text(f"cpu 1 2 3\nbtime {BOOT}\n")

    def put(
        self,
        pid: int,
        *,
        start: int,
        comm: str,
        image: int = 7,
        flags: int = 0,
        ppid: int = 1,
        state: str = "S",
        thread: bool = False,
    ) -> None:
        """`thread`: a thread that is not its group's leader (/proc/<tid> opens, /proc does not list it)."""
        (self.root / str(pid)).mkdir(exist_ok=True)
        after = [state, str(ppid)] + ["0"] * 4 + [str(flags)] + ["0"] * 12 + [str(start)] + ["0"] * 3
        after += (
            [str(image)] * 3 + ["0"] * 9 + ["-1" if thread else "17"] + ["0"] * 9 + [str(image)] * 4 + ["0"]
        )
        (self.root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(after)}\n")

    def counters(self, *, forks: int, last_pid: int, tasks: int = 100, pid_max: int = PID_MAX) -> None:
        """The kernel's fork counter and last PID (collect/new_pids.py); without them a scan lists /proc."""
        (self.root / "stat").write_text(f"cpu 1 2 3\nbtime {BOOT}\nprocesses {forks}\n")
        (self.root / "loadavg").write_text(f"0.00 0.01 0.05 1/{tasks} {last_pid}\n")
        (self.root / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
        (self.root / "sys" / "kernel" / "pid_max").write_text(f"{pid_max}\n")


class FakeDetails:
    """What psutil would read about the process now living at a PID (set by the test)."""

    def __init__(self) -> None:
        self.now: dict[int, Details] = {}
        self.calls: list[int] = []

    def __call__(self, pid: int) -> Details | None:
        self.calls.append(pid)
        return self.now.get(pid)


def fake_collector(root: Path) -> tuple[FakeProc, FakeDetails, IncrementalCollector]:
    proc, details = FakeProc(root), FakeDetails()
    packages = PackageResolver(PackageIndex(str(root)), proc_root=str(root))
    return proc, details, IncrementalCollector(proc_root=str(root), details=details, packages=packages)
