"""The agent's scan pipeline in report mode, as a process the detection cases start and read.

Each scan: snapshot (the collector, with package ownership) -> P2P behaviour over the policy's
window and evaluate (evaluate.BehaviourEvaluator, as in the agent) -> report-only
violations. Nothing is ever signalled.
One JSON line per scan describes the processes of one network namespace (the case's): their
established TCP peers, how many UDP and listening TCP sockets they hold, and the violations
found for them, so a harness can tell when a client made its first peer connection and when the
agent flagged it.

Run it inside the case's namespace (it then sees that namespace like an agent in a container
would) or in the host namespace with `--all-namespaces` (the agent on the host must see the
client in its sandbox).

    python -m bench.detect.probe --policy policies/default.yaml --netns 'net:[4026532246]' \
        --interval 0.5 --scans 20 [--all-namespaces]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from endpoint_agent.collect import Collector
from endpoint_agent.collect.api import machine_collector
from endpoint_agent.collect.netns import netns_of
from endpoint_agent.errors import AgentError
from endpoint_agent.evaluate import BehaviourEvaluator
from endpoint_agent.policy import compile_policy, evaluate, load_policy_file
from endpoint_agent.scan import findings_to_violations
from endpoint_agent.types import Snapshot, Violation

MAX_PEERS_LISTED = 64


def describe(
    snapshot: Snapshot, violations: list[Violation], netns: str, exclude: set[int]
) -> list[dict[str, Any]]:
    """The processes of `netns` that have sockets or violations, with both."""
    by_pid: dict[int, list[Violation]] = {}
    for v in violations:
        by_pid.setdefault(v.pid, []).append(v)
    peers: dict[int, list[str]] = {}
    udp: dict[int, int] = {}
    listening: dict[int, int] = {}
    for conn in snapshot.connections:
        if conn.pid is None:
            continue
        if conn.proto == "tcp" and conn.status == "ESTABLISHED" and conn.raddr:
            peers.setdefault(conn.pid, []).append(str(conn.raddr))
        elif conn.proto == "tcp" and conn.status == "LISTEN":
            listening[conn.pid] = listening.get(conn.pid, 0) + 1
        elif conn.proto == "udp":
            udp[conn.pid] = udp.get(conn.pid, 0) + 1
    out: list[dict[str, Any]] = []
    for pid, proc in sorted(snapshot.processes.items()):
        if pid in exclude or not (pid in peers or pid in udp or pid in listening or pid in by_pid):
            continue
        if netns_of(pid) != netns:
            continue
        features = snapshot.behaviour.get(proc.key)
        out.append(
            {
                "pid": pid,
                "name": proc.name,
                "exe": proc.exe,
                "established": sorted(peers.get(pid, []))[:MAX_PEERS_LISTED],
                "udp_sockets": udp.get(pid, 0),
                "listening": listening.get(pid, 0),
                "features": dataclasses.asdict(features) if features else None,
                "violations": [v.to_json() for v in by_pid.get(pid, [])],
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    policy = load_policy_file(Path(args.policy))
    compiled = compile_policy(policy)
    # The agent's own composition; without --all-namespaces, psutil's view (this namespace only).
    collector = machine_collector() if args.all_namespaces else Collector()
    behaviour = BehaviourEvaluator()  # annotate + evaluate, split here to print the features too
    netns = args.netns if args.netns != "self" else netns_of("self")
    exclude = {os.getpid()}
    started = time.monotonic()
    for scan in range(1, args.scans + 1):
        begin, wall = time.monotonic(), time.time()
        snapshot = behaviour.annotate(collector.snapshot(), compiled)
        violations = findings_to_violations(evaluate(snapshot, compiled), policy.version)
        took = time.monotonic() - begin
        line = {
            "scan": scan,
            "at": wall,
            "elapsed": round(begin - started, 3),
            "scan_seconds": round(took, 3),
            "processes": describe(snapshot, violations, netns or "", exclude),
        }
        print(json.dumps(line), flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - begin)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.detect.probe")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--netns", default="self", help="namespace id whose processes to describe")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--all-namespaces", action="store_true", help="collect sockets of every namespace")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except AgentError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
