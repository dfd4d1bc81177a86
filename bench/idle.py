"""Idle CPU of the service as the process count grows: 300, 1,500 and 3,000 processes, nothing starting.

`endpoint-agent run` with default settings (exec events, a full scan every 30 s) and a one-rule
policy; this benchmark adds sleeping processes (named copies of `sleep`, reaped by PID at the
end) until the machine has about 300, then 1,500, then 3,000, all in one run. At each size,
after the scans that read the new processes, a window of whole scan intervals (>= 2 minutes
each by default) is measured from the end of one scan to the end of another: the agent's own
CPU time (every thread, as the agent writes it in status.json at the end of each scan, to
the microsecond: the kernel's per-process counters count 10 ms ticks, about what an idle
scan costs) and the CPU time of its exec-watcher thread (what processes started meanwhile by
others on this machine cost it; on an idle machine that is zero). The idle figure is the
difference. What others' processes still cost the scans (reading processes new to them,
hashing new binaries) is printed beside it: on a shared machine it is not zero.

How noisy it is: each scan interval of a window is also measured on its own; the lowest,
median and highest interval are printed, and the 3,000 / 300 ratio from single intervals:
the medians', and the extremes (lowest over highest, highest over lowest).

Targets: with ~1,500 processes over >= 2 minutes, <= 0.25% of one core; with 3,000 processes
<= 1.5x the figure with 300 (whole windows). The agent's total CPU is printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.exec_cost import quiet_policy
from bench.load import machine_load, raise_nofile_limit
from bench.report import Target, targets_block
from bench.service import AgentUnderTest, start_agent
from tests.support import ProcessReaper

SUMMARY = "idle CPU of the service with 300, 1,500 and 3,000 sleeping processes (nothing starting)"
CORE_PERCENT_TARGET = 0.25
GROWTH_TARGET = 1.5
SIZES = (300, 1500, 3000)
NO_BREAK_GLASS = "/nonexistent/ea-bench-idle-break-glass"
SETTLE_SCANS = 2  # after a top-up: the scan reading the newcomers, then one to start the window on


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("idle")
    group.add_argument(
        "--idle-window", type=float, default=120.0, help="seconds measured at 1,500 (default 120)"
    )
    group.add_argument(
        "--idle-ratio-window",
        type=float,
        default=120.0,
        help="seconds measured at 300 and 3,000 (default 120)",
    )


@dataclass(frozen=True)
class Window:
    processes: int
    seconds: float
    scans: int
    execs: int
    agent_cpu: float
    watcher_cpu: float
    repairs: int
    newcomers: int  # processes the scans read because they were new to them (others' work)
    hashed: int  # executables hashed meanwhile (new binaries of others' processes)
    intervals: tuple[float, ...] = ()  # idle % of a core in each scan interval of the window

    @property
    def idle_percent(self) -> float:
        return 100 * max(0.0, self.agent_cpu - self.watcher_cpu) / self.seconds

    @property
    def total_percent(self) -> float:
        return 100 * self.agent_cpu / self.seconds

    def line(self) -> str:
        return (
            f"  {self.processes:>5} processes, {self.seconds:.0f}s, {self.scans} scans:"
            f" agent {self.total_percent:.3f}% of a core, exec watcher"
            f" {100 * self.watcher_cpu / self.seconds:.3f}% ({self.execs} execs by others),"
            f" idle {self.idle_percent:.3f}% (scans read {self.newcomers} new processes, hashed"
            f" {self.hashed} binaries); repairs so far {self.repairs}"
            f"\n        idle per scan interval: lowest {min(self.intervals):.3f}%,"
            f" median {statistics.median(self.intervals):.3f}%, highest {max(self.intervals):.3f}%"
        )


def _events(status: dict[str, Any]) -> dict[str, Any]:
    events = status.get("process_events")
    return events if isinstance(events, dict) else {}


def measure(agent: AgentUnderTest, seconds: float) -> Window:
    interval = float(agent.status().get("scan_interval") or 30.0)
    scans = max(1, round(seconds / interval))
    start = agent.status().get("scans", 0)
    first = agent.wait_scans(start + SETTLE_SCANS, timeout=SETTLE_SCANS * interval + 60)
    marks = [(_cpu(agent, first), time.monotonic(), first)]
    for _ in range(scans):  # one mark per scan end: the noise of single intervals
        status = agent.wait_scans(marks[-1][2]["scans"] + 1, timeout=interval + 60)
        marks.append((_cpu(agent, status), time.monotonic(), status))
    (cpu0, t0, before_status), (cpu1, t1, last) = marks[0], marks[-1]
    before, after = _events(before_status), _events(last)
    return Window(
        processes=int((last.get("last_scan") or {}).get("processes") or 0),
        seconds=t1 - t0,
        scans=last["scans"] - before_status["scans"],
        execs=int(after.get("execs", 0)) - int(before.get("execs", 0)),
        agent_cpu=cpu1 - cpu0,
        watcher_cpu=_watcher(after) - _watcher(before),
        repairs=int(_tracking(after).get("repairs", 0)),
        newcomers=_grew(before, after, "untracked_read"),
        hashed=_grew(before, after, "files_hashed"),
        intervals=tuple(
            100 * max(0.0, (c1 - c0) - (_watcher(_events(s1)) - _watcher(_events(s0)))) / (u1 - u0)
            for (c0, u0, s0), (c1, u1, s1) in itertools.pairwise(marks)
        ),
    )


def _cpu(agent: AgentUnderTest, status: dict[str, Any]) -> float:
    """The agent's CPU time when it wrote `status` at the end of a scan (to the microsecond)."""
    cpu = status.get("cpu_seconds")
    return float(cpu) if isinstance(cpu, int | float) else agent.cpu_seconds()  # 10 ms ticks


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def _median(window: Window) -> float:
    return statistics.median(window.intervals)


def _watcher(events: dict[str, Any]) -> float:
    return float(events.get("cpu_seconds", 0.0))


def _grew(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    return int(_tracking(after).get(key, 0)) - int(_tracking(before).get(key, 0))


def _tracking(events: dict[str, Any]) -> dict[str, Any]:
    tracking = events.get("tracking")
    return tracking if isinstance(tracking, dict) else {}


def run(args: argparse.Namespace) -> list[Target]:
    window, ratio_window = float(args.idle_window), float(args.idle_ratio_window)
    print(f"idle: the service with {', '.join(map(str, SIZES))} processes, nothing started by it", flush=True)
    raise_nofile_limit(4096)
    results: dict[int, Window] = {}
    with (
        contextlib.ExitStack() as loads,
        tempfile.TemporaryDirectory(prefix="ea-bench-idle-") as tmp,
        ProcessReaper() as reaper,
    ):
        config = {
            "enforce_scope_pid": os.getpid(),
            "notify": False,
            "break_glass_file": "/nonexistent/ea-idle",
        }
        agent = start_agent(
            Path(tmp), quiet_policy("ea-bench-nx-idle"), config, reaper=reaper, name="service"
        )
        agent.wait_events()
        for size in SIZES:
            missing = size - len(psutil.pids())
            if missing > 0:
                loads.enter_context(machine_load(missing, 0, progress=False))
            results[size] = measure(agent, window if size == 1500 else ratio_window)
            print(results[size].line(), flush=True)
        agent.stop()
    low, mid, high = (results[s] for s in SIZES)
    growth = _ratio(high.idle_percent, low.idle_percent)
    print(f"  ~1,500 processes: agent total {mid.total_percent:.3f}% of a core (exec watcher included)")
    print(
        f"  3,000 / 300 by single scan intervals: median {_ratio(_median(high), _median(low)):.2f},"
        f" from {_ratio(min(high.intervals), max(low.intervals)):.2f} (lowest / highest)"
        f" to {_ratio(max(high.intervals), min(low.intervals)):.2f} (highest / lowest)"
    )
    targets = [
        Target("idle CPU, ~1,500 processes (% of one core)", mid.idle_percent, CORE_PERCENT_TARGET),
        Target("idle CPU, 3,000 / 300 processes", growth, GROWTH_TARGET),
    ]
    print("\n" + targets_block(targets))
    return targets
