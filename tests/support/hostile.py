"""A hostile local user's attacks on the agent, and a memory cgroup to hold the agent to its unit's limit.

with MemoryCgroup(256 * MB) as cg:          # cgroup v1 or v2 under this process's own cgroup
    argv = cg.wrap([...agent argv...])      # the agent joins it before it execs
    ...
    assert not cg.limit_reached()

big_argument_script(150, 15)               # sh script: 150 processes, each 15 args of ~128 KiB
AS_NOBODY + argv                           # run as nobody (setpriv, util-linux)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from types import TracebackType

MB = 2**20
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
ARG_BYTES = 128 * 1024 - 64  # the kernel's per-argument maximum, less room for the rest


def big_argument_script(processes: int, args: int, arg_bytes: int = ARG_BYTES) -> list[str]:
    """argv of a shell that starts `processes` sleepers, each with `args` arguments of `arg_bytes`."""
    quoted = " ".join(['"$B"'] * args)
    script = (
        f'B=$(head -c {arg_bytes} /dev/zero | tr "\\0" z); i=0; '
        f'while [ $i -lt {processes} ]; do sh -c "sleep 600; :" big {quoted} & i=$((i+1)); done; wait'
    )
    return ["sh", "-c", script]


def _own_memory_cgroup() -> tuple[Path, str] | None:
    """(directory, version) of this process's memory cgroup, where a child can be made."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory")
            if base.is_dir():
                return base / path.lstrip("/"), "v1"
    for line in lines:
        if line.startswith("0::"):
            base = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            with contextlib.suppress(OSError):
                if "memory" in (base / "cgroup.subtree_control").read_text().split():
                    return base, "v2"
    return None


def memory_cgroup_available() -> str | None:
    """None when a child memory cgroup can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (a memory cgroup)"
    found = _own_memory_cgroup()
    if found is None:
        return "no writable memory cgroup (v1 memory hierarchy, or v2 with memory delegated)"
    probe = found[0] / f"ea-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a memory cgroup under {found[0]}: {exc.strerror}"
    probe.rmdir()
    return None


class MemoryCgroup:
    def __init__(self, limit_bytes: int) -> None:
        found = _own_memory_cgroup()
        if found is None:
            raise RuntimeError("no memory cgroup available")
        parent, self.version = found
        self.path = parent / f"ea-test-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        limit_file = "memory.limit_in_bytes" if self.version == "v1" else "memory.max"
        (self.path / limit_file).write_text(str(limit_bytes))
        self.limit = limit_bytes

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wrap(self, argv: list[str]) -> list[str]:
        """argv that joins this cgroup, then execs `argv` (so everything it allocates is charged)."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *argv]

    def peak(self) -> int:
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / name).read_text())
        return 0

    def limit_reached(self) -> bool:
        """Whether any allocation ever hit the limit (v1 failcnt, v2 max/oom events)."""
        if self.version == "v1":
            return int((self.path / "memory.failcnt").read_text()) > 0
        events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
        return int(events.get("max", 0)) > 0 or int(events.get("oom_kill", 0)) > 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()  # empty once its processes are gone (the namespace is killed first)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


__all__ = [
    "AS_NOBODY",
    "MB",
    "NOBODY",
    "MemoryCgroup",
    "big_argument_script",
    "memory_cgroup_available",
    "rss_bytes",
]
