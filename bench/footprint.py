"""Steady-state CPU of the service: `endpoint-agent run` vs a naive full psutil scan every 5 s.

On ~600 processes and ~2,000 loopback TCP connections, both run side by side for the same
window (60 s by default) after their start-up: the service in standalone mode with default
settings (so exec events where available and a full scan every 30 s), and bench.naive. Each
one's own CPU time (user + system, children included) is read from the kernel at both ends
of the window. Targets: service / naive <= 0.25, and service <= 0.5% of one core.

The policy is policies/default.yaml in monitor mode, and the service may only ever stop
descendants of this benchmark (enforce_scope_pid): nothing on the machine is signalled.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import machine_load
from bench.report import Target, targets_block
from bench.service import REPO, clean_env, start_agent
from tests.support import ProcessReaper, die_with_parent

SUMMARY = "steady-state CPU of `endpoint-agent run` vs a naive psutil scan every 5 s (~600 processes)"
RATIO_TARGET = 0.25
CORE_PERCENT_TARGET = 0.5
NAIVE_INTERVAL = 5.0
SETTLE = 3.0  # after the service's first scan, before the window opens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("footprint")
    group.add_argument("--window", type=float, default=60.0, help="measured seconds (default 60)")


def monitor_policy() -> str:
    text = (REPO / "policies" / "default.yaml").read_text()
    lines = ["mode: monitor" if line.startswith("mode:") else line for line in text.splitlines()]
    if "mode: monitor" not in lines:
        raise RuntimeError("policies/default.yaml has no top-level `mode:` line to set to monitor")
    return "\n".join(lines) + "\n"


def _cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def run(args: argparse.Namespace) -> list[Target]:
    window = float(args.window)
    print(f"footprint: ~600 processes, ~2,000 loopback connections, a {window:g}s window", flush=True)
    with (
        machine_load(600, 2000) as load,
        tempfile.TemporaryDirectory(prefix="ea-bench-footprint-") as tmp,
        ProcessReaper() as reaper,
    ):
        agent = start_agent(
            Path(tmp), monitor_policy(), {"enforce_scope_pid": os.getpid()}, reaper=reaper, name="service"
        )
        first = agent.wait_scans(1)
        time.sleep(SETTLE)
        naive = reaper.track(
            subprocess.Popen(
                [sys.executable, "-m", "bench.naive", str(NAIVE_INTERVAL)],
                stdout=subprocess.PIPE,
                cwd=REPO,
                env=clean_env(),
                preexec_fn=die_with_parent(),
            )
        )
        assert naive.stdout is not None
        if naive.stdout.readline().strip() != b"ready":
            raise RuntimeError("the naive scanner did not start")
        time.sleep(0.5)  # its scans now fall at +5 s, +10 s, ..., +60 s: all inside the window
        agent_0, naive_0 = agent.cpu_seconds(), _cpu(naive.pid)
        status_0 = agent.status()
        time.sleep(window)
        agent_cpu, naive_cpu = agent.cpu_seconds() - agent_0, _cpu(naive.pid) - naive_0
        status = agent.status()
        rss = agent.rss_bytes()
        agent.stop()
        held = len(load.pids)
    events = status.get("process_events", {})
    scans = status.get("scans", 0) - status_0.get("scans", 0)
    execs = events.get("execs", 0) - status_0.get("process_events", {}).get("execs", 0)
    naive_scans = int(window // NAIVE_INTERVAL)
    print(
        f"  service: {first.get('last_scan', {}).get('processes')} processes, process events:"
        f" {events.get('mode', '?')}, scan interval {status.get('scan_interval')}s; {held} load processes"
    )
    print(
        f"  service CPU over {window:g}s: {agent_cpu:.3f}s ({scans} full scans; {execs} execs on the machine)"
    )
    print(f"  naive CPU over {window:g}s:   {naive_cpu:.3f}s ({naive_scans} full psutil scans)")
    print(f"  service RSS at the end: {rss / 2**20:.1f} MB")
    ratio = agent_cpu / naive_cpu if naive_cpu > 0 else float("inf")
    targets = [
        Target("service CPU / naive 5 s psutil loop", ratio, RATIO_TARGET),
        Target("service CPU, % of one core", 100 * agent_cpu / window, CORE_PERCENT_TARGET),
    ]
    print("\n" + targets_block(targets))
    return targets
