"""Reaction time: from the exec of a blocked program to its termination by `endpoint-agent run`.

On ~600 processes and ~2,000 loopback connections, a copy of `sleep` under a unique name is
launched 50 times; the only block rule of the policy names it. The time is measured here,
from just before the launch (fork + exec) until the process is gone (its exit is reaped):

* with process exec events (the default on Linux as root): one launch at a time;
  targets p50 <= 100 ms, p95 <= 300 ms;
* polling (`process_events: false`, so a full scan every 5 s): launches 100 ms apart, for
  the figure beside it (no target: it is the interval, give or take).

KILL SAFETY: the agent runs with `enforce_scope_pid` set to this benchmark, so it can only
ever signal descendants of it, and its policy blocks nothing but the unique stand-in name.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.load import machine_load
from bench.report import Target, targets_block
from bench.service import AgentUnderTest, start_agent
from bench.timing import fmt_seconds
from tests.support import ProcessReaper, named_executable

SUMMARY = "exec of a blocked program -> termination, with exec events and polling (p50/p95 of 50)"
P50_TARGET = 0.100
P95_TARGET = 0.300
TIMEOUT = 15.0  # a launch not stopped by then counts as this long
POLL_SPACING = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reaction")
    group.add_argument("--launches", type=int, default=50, help="launches per mode (default 50)")


def blocking_policy(name: str) -> str:
    return (
        "name: bench-reaction\nversion: 1\nmode: enforce\nrules:\n"
        f"  - id: bench-blocked\n    category: bench\n    action: block\n"
        f'    message: "benchmark stand-in"\n    process:\n      name: ["{name}"]\n'
    )


def agent_config(process_events: bool) -> dict[str, object]:
    return {
        "enforce_scope_pid": os.getpid(),  # the stand-ins are our children; nothing else is in scope
        "process_events": process_events,
        "notify": False,
        "circuit_max_kills": 10_000,  # 100 kills on purpose; the default breaker would stop at 5
        "break_glass_file": "/nonexistent/ea-bench-break-glass",
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def one_at_a_time(exe: Path, launches: int) -> tuple[list[float], int]:
    """Each launch waits for its termination; returns (seconds per launch, launches not killed)."""
    times: list[float] = []
    missed = 0
    for _ in range(launches):
        started = time.perf_counter()
        proc = subprocess.Popen([str(exe), "60"], stdin=subprocess.DEVNULL)
        try:
            code = proc.wait(TIMEOUT)
            times.append(time.perf_counter() - started)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
            times.append(TIMEOUT)
        if code not in (-signal.SIGTERM, -signal.SIGKILL) or times[-1] >= TIMEOUT:
            missed += 1
        time.sleep(0.02)
    return times, missed


def staggered(exe: Path, launches: int) -> tuple[list[float], int]:
    """Launches `POLL_SPACING` apart, all outstanding together; times from each launch to its end."""
    running: list[tuple[float, subprocess.Popen[bytes]]] = []
    for _ in range(launches):
        started = time.perf_counter()
        running.append((started, subprocess.Popen([str(exe), "60"], stdin=subprocess.DEVNULL)))
        time.sleep(POLL_SPACING)
    ended: dict[int, float] = {}
    deadline = time.perf_counter() + TIMEOUT
    while len(ended) < len(running) and time.perf_counter() < deadline:
        for started, proc in running:
            if proc.pid not in ended and proc.poll() is not None:
                ended[proc.pid] = time.perf_counter() - started
        time.sleep(0.005)
    missed = 0
    times = []
    for _, proc in running:
        if proc.pid not in ended:
            proc.kill()
            proc.wait(10)
            ended[proc.pid] = TIMEOUT
        if proc.returncode not in (-signal.SIGTERM, -signal.SIGKILL) or ended[proc.pid] >= TIMEOUT:
            missed += 1
        times.append(ended[proc.pid])
    return times, missed


def _line(label: str, times: list[float], missed: int) -> str:
    p50, p95 = fmt_seconds(percentile(times, 0.5)), fmt_seconds(percentile(times, 0.95))
    return (
        f"  {label:<24} p50 {p50:>9}  p95 {p95:>9}"
        f"  max {fmt_seconds(max(times)):>9}  mean {fmt_seconds(statistics.fmean(times)):>9}"
        f"  ({len(times)} launches, {missed} not stopped by the agent)"
    )


def _violations(agent: AgentUnderTest) -> int:
    from endpoint_agent.report.store import ViolationStore

    store = ViolationStore.open_existing(agent.state_dir / "violations.sqlite3")
    if store is None:
        return 0
    try:
        return sum(1 for e in store.events(kind="violation") if e.payload.get("action") == "killed")
    finally:
        store.close()


def run(args: argparse.Namespace) -> list[Target]:
    launches = int(args.launches)
    name = f"ea-bench-blk-{secrets.token_hex(3)}"  # unique on this machine, <= 15 chars (comm)
    print(
        f"reaction: {launches} launches of {name!r} per mode; ~600 processes, ~2,000 connections", flush=True
    )
    with (
        machine_load(600, 2000, progress=False),
        tempfile.TemporaryDirectory(prefix="ea-bench-reaction-") as tmp,
        ProcessReaper() as reaper,
    ):
        exe = named_executable(name, Path(tmp), "sleep")
        agent = start_agent(
            Path(tmp), blocking_policy(name), agent_config(True), reaper=reaper, name="events"
        )
        status = agent.wait_scans(1)
        mode = status.get("process_events", {}).get("mode")
        if mode != "events":
            agent.stop()
            raise RuntimeError(f"process events are not available here (mode {mode!r}); needs Linux and root")
        event_times, event_missed = one_at_a_time(exe, launches)
        agent.stop()
        event_kills = _violations(agent)

        agent = start_agent(
            Path(tmp), blocking_policy(name), agent_config(False), reaper=reaper, name="polling"
        )
        status = agent.wait_scans(1)
        poll_times, poll_missed = staggered(exe, launches)
        agent.stop()
        poll_kills = _violations(agent)
    print(_line("exec events", event_times, event_missed) + f"; {event_kills} kills recorded")
    print(
        _line(f"polling ({status.get('scan_interval')}s scans)", poll_times, poll_missed)
        + f"; {poll_kills} kills recorded"
    )
    targets = [
        Target("exec events: p50 reaction (ms)", 1000 * percentile(event_times, 0.5), 1000 * P50_TARGET),
        Target("exec events: p95 reaction (ms)", 1000 * percentile(event_times, 0.95), 1000 * P95_TARGET),
        Target("exec events: launches not stopped", event_missed, 0),
    ]
    print("\n" + targets_block(targets))
    return targets
