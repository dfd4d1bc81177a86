"""Memory footprint of the service: RSS after 10 scans and after 2,000 scans.

On ~600 processes and ~2,000 loopback connections, bench.rss_probe runs the service as
`endpoint-agent run` wires it in standalone mode (policies/default.yaml in monitor mode, exec
events as by default), its scan job running scans back to back, and reports its own RSS.
Targets: growth between 10 and 2,000 scans <= 5 MB, and RSS <= 60 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.footprint import monitor_policy
from bench.load import machine_load
from bench.report import Target, targets_block
from bench.service import REPO, clean_env
from tests.support import ProcessReaper, die_with_parent

SUMMARY = "RSS of the service after 10 and after 2,000 scans (~600 processes, ~2k connections)"
GROWTH_TARGET_MB = 5.0
RSS_TARGET_MB = 60.0
MB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory")
    group.add_argument("--scans", type=int, default=2000, help="scans in the long run (default 2000)")


def run(args: argparse.Namespace) -> list[Target]:
    scans = int(args.scans)
    print(f"memory: RSS after 10 and {scans:,} scans; ~600 processes, ~2,000 connections", flush=True)
    with (
        machine_load(600, 2000, progress=False),
        tempfile.TemporaryDirectory(prefix="ea-bench-memory-") as tmp,
        ProcessReaper() as reaper,
    ):
        base = Path(tmp)
        (base / "policy.yaml").write_text(monitor_policy())
        (base / "agent.yaml").write_text(f"enforce_scope_pid: {os.getpid()}\nlog_level: ERROR\n")
        argv = [
            sys.executable, "-m", "bench.rss_probe", "--policy", str(base / "policy.yaml"),
            "--config", str(base / "agent.yaml"), "--state-dir", str(base / "state"),
            "--scans", str(scans), "--at", f"10,{scans // 2},{scans}",
        ]  # fmt: skip
        probe = reaper.track(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, cwd=REPO, env=clean_env(), preexec_fn=die_with_parent()
            )
        )
        assert probe.stdout is not None
        points = [json.loads(line) for line in probe.stdout]
        if probe.wait(60) != 0 or len(points) != 3:
            raise RuntimeError(f"the RSS probe failed (exit {probe.returncode}, {len(points)} checkpoints)")
    first, last = points[0], points[-1]
    for p in points:
        print(f"  after {p['scans']:>6,} scans: RSS {p['rss'] / MB:6.1f} MB  ({p['seconds']:.0f}s)")
    per_scan = (last["seconds"] - first["seconds"]) / (last["scans"] - first["scans"])
    print(f"  one scan (tick + status.json), back to back: {per_scan * 1000:.1f} ms")
    targets = [
        Target(
            f"RSS growth, 10 -> {scans:,} scans (MB)", (last["rss"] - first["rss"]) / MB, GROWTH_TARGET_MB
        ),
        Target(f"RSS after {scans:,} scans (MB)", last["rss"] / MB, RSS_TARGET_MB),
    ]
    print("\n" + targets_block(targets))
    return targets
