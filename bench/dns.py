"""The DNS filter and the nftables table: answer latency from cache, throughput, set update cost.

Everything runs in a loopback-only network namespace (bench/detect/sandbox.py): a test zone
server, the agent's forwarder with a policy of `--dns-rules` domain rules (none matches the
queried name, so the figures include the policy check every query pays), and a client in its
own process. Targets: p50 of an answer from the cache <= 1 ms; >= 5,000 queries/s (shown as
5000 / measured q/s <= 1); 10,000 learned addresses into the rule's nftables set in <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.detect.sandbox import LoopbackNamespace, missing_requirements
from bench.report import Target, targets_block

SUMMARY = "DNS filter: cache answer p50, queries/s, nftables update of 10,000 addresses"
P50_LIMIT_MS = 1.0
QPS_TARGET = 5000.0
NFT_LIMIT_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dns")
    group.add_argument(
        "--dns-rules", type=int, default=1000, help="domain rules in the policy (default 1000)"
    )
    group.add_argument("--dns-seconds", type=float, default=3.0, help="throughput window (default 3 s)")


def run(args: argparse.Namespace) -> list[Target]:
    reason = missing_requirements()
    if reason is not None:
        raise RuntimeError(f"dns: {reason}")
    probe = [sys.executable, "-m", "bench.dns_probe"]
    with LoopbackNamespace() as ns:
        server = ns.popen([*probe, "serve", "--rules", str(args.dns_rules)], stdout_pipe=True)
        assert server.stdout is not None
        if server.stdout.readline().strip() != b"ready":
            raise RuntimeError("dns: the forwarder did not start")
        measured = json.loads(ns.run([*probe, "load", "--seconds", str(args.dns_seconds)], timeout=120))
        table = json.loads(ns.run([*probe, "nft"], timeout=120))
    print(
        f"  policy: {args.dns_rules} domain rules; from cache: p50 {measured['p50_ms']:.3f} ms,"
        f" p99 {measured['p99_ms']:.3f} ms; {measured['qps']:.0f} queries/s (32 in flight,"
        f" {measured['lost']} unanswered at the end)"
    )
    print(f"  nftables: {table['elements']} elements in the table, 10,000 added in {table['seconds']:.3f} s")
    if table["elements"] < 10_000:
        raise RuntimeError(f"dns: only {table['elements']} elements reached the nftables set")
    targets = [
        Target("cache answer p50 (ms)", measured["p50_ms"], P50_LIMIT_MS),
        Target("5000 q/s / measured q/s", QPS_TARGET / max(measured["qps"], 1.0), 1.0),
        Target("nftables update, 10,000 addresses (s)", table["seconds"], NFT_LIMIT_S),
    ]
    print(targets_block(targets))
    return targets
