"""The composed machine view: every namespace's sockets (Linux) and P2P behaviour per scan."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from endpoint_agent.collect.api import machine_collector
from endpoint_agent.collect.behaviour import BehaviourTracker
from endpoint_agent.collect.netns_sockets import all_namespace_sockets
from endpoint_agent.evaluate import BehaviourEvaluator
from endpoint_agent.policy import compile_policy, parse_policy
from endpoint_agent.scan import scan_once
from endpoint_agent.types import Finding, Snapshot

# Loose thresholds: three peers on high ports are enough here.
LOOSE = """
name: t
version: 1
rules:
  - {id: loose, category: p2p, action: report, network: {p2p: {min_score: 1, min_peers: 1, window_scans: 4}}}
"""


def _pair() -> list[socket.socket]:
    """Connections to three loopback addresses (three peers on high ports), both ends held: each
    address is dialled and dials back, so they are peers met both ways (a peer signal)."""
    socks: list[socket.socket] = []
    for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        server = socket.socket()
        server.bind((ip, 0))
        server.listen()
        client = socket.create_connection(server.getsockname(), source_address=(ip, 0))
        accepted, _ = server.accept()
        socks += [server, client, accepted]
    return socks


def test_findings_use_the_behaviour_of_this_scan() -> None:
    compiled = compile_policy(parse_policy(LOOSE, "t"))
    socks = _pair()
    try:
        findings = scan_once(compiled)
    finally:
        for sock in socks:
            sock.close()
    mine = [f for f in findings if f.rule_id == "loose" and f.process.pid == os.getpid()]
    assert mine and "P2P behaviour over 1 scan" in mine[0].reason


def test_window_follows_the_policy_and_each_call_is_one_scan() -> None:
    seen: list[Snapshot] = []

    def engine(snapshot: Snapshot, compiled: object) -> list[Finding]:
        seen.append(snapshot)
        return []

    tracker = BehaviourTracker(window_scans=3)
    evaluate = BehaviourEvaluator(tracker=tracker, evaluate=engine)
    compiled = compile_policy(parse_policy(LOOSE, "t"))
    collector = machine_collector()
    socks = _pair()
    try:
        for _ in range(2):
            evaluate(collector.snapshot(), compiled)
    finally:
        for sock in socks:
            sock.close()
    assert tracker.window_scans == 4
    me = next(p for p in seen[-1].processes.values() if p.pid == os.getpid())
    assert seen[-1].behaviour[me.key].scans == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux")
def test_linux_collector_reads_every_namespace() -> None:
    assert machine_collector()._sockets is all_namespace_sockets
