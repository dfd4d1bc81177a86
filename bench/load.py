"""A busy workstation, made of real processes and real loopback connections.

`machine_load(processes=600, connections=2000)` starts copies of `sleep` under a few dozen
names (each name its own file, so the agent hashes a few dozen distinct binaries) and a
few Python processes that each hold many connected TCP pairs on 127.0.0.1. Everything is
tracked by a `ProcessReaper` and killed by PID when the block ends, however it ends
(exception, Ctrl-C, SIGTERM via `bench.__main__`); children also die with the benchmark
process if it is SIGKILLed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import math
import resource
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import Pairs, ProcessReaper, SpawnedProcess, shared_exe_dir, spawn_named_process

PAIRS_PER_HOLDER = 500
SLEEP_NAMES = 30


@dataclass
class MachineLoad:
    exe_dir: Path
    sleepers: list[SpawnedProcess] = field(default_factory=list)
    holders: list[SpawnedProcess] = field(default_factory=list)

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.sleepers + self.holders}

    @property
    def connections(self) -> int:
        return sum(len(ps.clients) for h in self.holders for ps in h.pairs)

    @property
    def names(self) -> list[str]:
        return sorted({p.name for p in self.sleepers + self.holders})


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@contextmanager
def machine_load(processes: int, connections: int, *, progress: bool = True) -> Iterator[MachineLoad]:
    """About `processes` processes in total, holding `connections` TCP connections (both ends)."""
    holders = math.ceil(connections / PAIRS_PER_HOLDER) if connections else 0
    sleepers = max(processes - holders, 0)
    raise_nofile_limit(2 * PAIRS_PER_HOLDER + 256)
    load = MachineLoad(exe_dir=shared_exe_dir(prefix="ea-bench-bin-"))
    try:
        with ProcessReaper() as reaper:
            left = connections
            for i in range(holders):
                count = min(PAIRS_PER_HOLDER, left)
                left -= count
                load.holders.append(
                    spawn_named_process(
                        f"bench-holder-{i}", Pairs(count, "127.0.0.1"), reaper=reaper, exe_dir=load.exe_dir
                    )
                )
            for i in range(sleepers):
                load.sleepers.append(
                    spawn_named_process(
                        f"bench-app-{i % SLEEP_NAMES:02d}",
                        reaper=reaper,
                        exe_dir=load.exe_dir,
                        program="sleep",
                    )
                )
                if progress and (i + 1) % 100 == 0:
                    print(f"  started {i + 1}/{sleepers} processes", file=sys.stderr, flush=True)
            yield load
            if progress:
                print(f"  stopping {len(reaper)} processes", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(load.exe_dir, ignore_errors=True)
