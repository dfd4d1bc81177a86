"""Scan cost: collection vs the agent's snapshot vs policy evaluation, on a loaded machine.

Starts ~600 processes and ~2,000 loopback TCP connections, then measures in the same run:
raw psutil collection (what any agent must pay), `Collector.snapshot()` with a warm hash
cache, and `evaluate()` with synthetic policies of 10, 1,000 and 10,000 rules. The targets
say the policy engine must scale with the machine, not with the policy:
eval(10k) <= 0.25 x raw collection, and eval(10k) <= 2 x eval(10).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

import psutil

from bench.load import machine_load
from bench.policies import synthetic_policy
from bench.report import Target, targets_block, timing_table
from bench.timing import Timing, fmt_seconds, measure
from endpoint_agent.collect import Collector
from endpoint_agent.collect.incremental import IncrementalCollector
from endpoint_agent.collect.snapshot import PROCESS_ATTRS
from endpoint_agent.types import Snapshot

SUMMARY = "collection vs snapshot vs evaluation (10 / 1k / 10k rules) on ~600 processes, ~2k connections"
RAW_TARGET = 0.25
SCALING_TARGET = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scan")
    group.add_argument("--processes", type=int, default=600, help="processes to start (default 600)")
    group.add_argument("--connections", type=int, default=2000, help="TCP connections to hold (default 2000)")
    group.add_argument("--repeat", type=int, default=15, help="measured runs per figure (default 15)")
    group.add_argument(
        "--rules", type=_sizes, default=[10, 1000, 10000],
        help="policy sizes, comma-separated; the first and last are the targets' (default 10,1000,10000)",
    )  # fmt: skip


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("policy sizes must be >= 1")
    return sizes


def raw_collection() -> None:
    """What psutil costs on its own: the same attribute pass and socket list, nothing else."""
    for proc in psutil.process_iter(PROCESS_ATTRS, ad_value=None):
        _ = proc.info
    psutil.net_connections(kind="inet")


def run(args: argparse.Namespace) -> list[Target]:
    from endpoint_agent.policy import Policy, compile_policy, evaluate

    print(
        f"scan: starting {args.processes} processes and {args.connections} loopback TCP connections"
        f" ({os.cpu_count()} CPUs, Python {platform.python_version()}, psutil {psutil.__version__})",
        flush=True,
    )
    with machine_load(args.processes, args.connections) as load:
        collector = Collector()
        collector.snapshot()  # fill the hash cache: the service's steady state
        snap = collector.snapshot()
        _check_load_visible(snap, load.pids, args.connections)
        print(
            f"  snapshot: {len(snap.processes)} processes, {len(snap.connections)} inet sockets,"
            f" {collector.hash_stats.files_hashed} distinct executables hashed",
            flush=True,
        )
        timings: list[Timing] = [
            measure("raw psutil collection", raw_collection, repeat=args.repeat),
            measure("agent snapshot (warm hash cache)", collector.snapshot, repeat=args.repeat),
        ]
        if sys.platform.startswith("linux"):
            # What the service really runs on Linux: only what changed since the last scan is read.
            incremental = IncrementalCollector()
            incremental.snapshot()
            timings.append(
                measure("agent incremental snapshot (steady)", incremental.snapshot, repeat=args.repeat)
            )
        evals: dict[int, Timing] = {}
        for size in args.rules:
            document = synthetic_policy(
                size, process_matches=("bench-app-07",), network_matches=("bench-holder-*",)
            )
            started = time.perf_counter()
            compiled = compile_policy(Policy.model_validate(document))
            compile_s = time.perf_counter() - started
            findings = evaluate(snap, compiled)
            evals[size] = measure(
                f"evaluate, {size:,} rules", functools.partial(evaluate, snap, compiled), repeat=args.repeat
            )
            timings.append(evals[size])
            print(
                f"  {size:>6,} rules: validate+compile {fmt_seconds(compile_s)}, {len(findings)} findings",
                flush=True,
            )
    print()
    print(timing_table(timings))
    raw, snapshot_t = timings[0], timings[1]
    small, large = evals[args.rules[0]], evals[args.rules[-1]]
    print(f"\n  snapshot / raw collection: {snapshot_t.median / raw.median:.2f} (information, no target)")
    if len(timings) > 2 and timings[2].label.startswith("agent incremental"):
        print(f"  incremental snapshot / raw collection: {timings[2].median / raw.median:.2f} (information)")
    targets = [
        Target(f"eval({args.rules[-1]:,}) / raw collection", large.median / raw.median, RAW_TARGET),
        Target(
            f"eval({args.rules[-1]:,}) / eval({args.rules[0]:,})", large.median / small.median, SCALING_TARGET
        ),
    ]
    print("\n" + targets_block(targets))
    return targets


def _check_load_visible(snap: Snapshot, pids: set[int], connections: int) -> None:
    """The measurement only means something if the load is really in the snapshot."""
    missing = pids - snap.processes.keys()
    held = sum(1 for c in snap.connections if c.pid in pids and c.status == "ESTABLISHED")
    if missing or held < 2 * connections:
        raise RuntimeError(
            f"load not visible: {len(missing)} processes missing,"
            f" {held}/{2 * connections} connection ends seen"
        )
