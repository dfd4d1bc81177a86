"""A hostile local user against `endpoint-agent run`: its RSS and its stop latency under attack.

* Memory: 150 processes with 15 arguments of ~128 KiB each (~290 MB of command lines). Target:
  the agent's RSS moves by <= 10 MB.
* Hashing: under a policy with a sha256 rule (so the agent hashes executables), 40 sparse 500 MiB
  executables start; then a blocked stand-in is launched 10 times, one at a time. Targets: its
  p95 stop latency <= one scan interval, and the ratio to the same launches before the attack.

KILL SAFETY: the agent runs with `enforce_scope_pid` set to this benchmark, so it can only ever
signal descendants of it, and its block rules name only the unique stand-in (and a digest that
no file has).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from bench.reaction import agent_config, one_at_a_time, percentile
from bench.report import Target, targets_block
from bench.service import start_agent
from bench.timing import fmt_seconds
from tests.support import ProcessReaper, named_executable
from tests.support.hostile import MB, big_argument_script
from tests.support.reaper import die_with_parent

SUMMARY = "RSS and stop latency of the service under a memory attack and a hashing attack"
SCAN_INTERVAL = 2.0
RSS_GROWTH_TARGET_MB = 10.0
RATIO_TARGET = 5.0  # a p50 of tens of ms moves with the machine's load; the interval is the real bound
HUGE = 40
LAUNCHES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def policy(name: str) -> str:
    return (
        "name: bench-hostile\nversion: 1\nmode: enforce\nrules:\n"
        "  - id: bench-blocked\n    category: bench\n    action: block\n"
        f'    process:\n      name: ["{name}"]\n'
        "  - id: bench-known-bad\n    category: bench\n    action: block\n"
        f'    process:\n      sha256: ["{"ab" * 32}"]\n'
    )


def run(args: argparse.Namespace) -> list[Target]:
    del args
    name = f"ea-bench-h-{secrets.token_hex(3)}"
    print(f"hostile: 150 x 15 x 128 KiB arguments; {HUGE} sparse 500 MiB executables; {name!r}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ea-bench-hostile-") as tmp, ProcessReaper() as reaper:
        base = Path(tmp)
        exe = named_executable(name, base, "sleep")
        config = {**agent_config(True), "scan_interval": SCAN_INTERVAL, "log_level": "ERROR"}
        agent = start_agent(base, policy(name), config, reaper=reaper)
        agent.wait_scans(3)
        before_times, before_missed = one_at_a_time(exe, LAUNCHES)

        rss_before = agent.rss_bytes()
        processes = agent.status()["last_scan"]["processes"]
        reaper.track(
            subprocess.Popen(
                big_argument_script(150, 15), stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )  # fmt: skip
        status = agent.wait_status(lambda s: s["last_scan"]["processes"] >= processes + 150)
        agent.wait_scans(status["scans"] + 3)
        rss_growth = (agent.rss_bytes() - rss_before) / MB

        for i in range(HUGE):
            directory = base / f"huge{i}"
            directory.mkdir()
            huge = named_executable("huge", directory, "sleep")
            os.truncate(huge, 500 * MB)  # sparse, still runs
            reaper.track(
                subprocess.Popen(
                    [str(huge), "600"], stdin=subprocess.DEVNULL, start_new_session=True,
                    preexec_fn=die_with_parent(),
                )
            )  # fmt: skip
        time.sleep(0.5)
        under_times, under_missed = one_at_a_time(exe, LAUNCHES)
        hashing = agent.status().get("hashing") or {}
        agent.stop()

    p50_before, p50_under = percentile(before_times, 0.5), percentile(under_times, 0.5)
    p95_under = percentile(under_times, 0.95)
    print(f"  agent RSS growth under 150 x 1.9 MiB command lines: {rss_growth:.1f} MB")
    print(
        f"  stop latency p50 before {fmt_seconds(p50_before)}, under {HUGE} huge executables "
        f"p50 {fmt_seconds(p50_under)} p95 {fmt_seconds(p95_under)} (scan interval {SCAN_INTERVAL:g}s); "
        f"hash queue {hashing.get('queued', '?')}, {hashing.get('files_hashed', '?')} files hashed"
    )
    targets = [
        Target("memory attack: agent RSS growth (MB)", rss_growth, RSS_GROWTH_TARGET_MB),
        Target("hashing attack: p95 stop / scan interval", p95_under / SCAN_INTERVAL, 1.0),
        Target("hashing attack: p50 stop, under / before", p50_under / max(p50_before, 1e-3), RATIO_TARGET),
        Target("launches not stopped", before_missed + under_missed, 0),
    ]
    print("\n" + targets_block(targets))
    return targets
