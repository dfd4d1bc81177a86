"""The DNS filter benchmark's workers, run inside a loopback-only namespace by bench/dns.py.

python -m bench.dns_probe serve --rules N   # test zone + the agent's forwarder; prints "ready"
python -m bench.dns_probe load --seconds S  # latency from cache, then throughput; one JSON line
python -m bench.dns_probe nft --addresses N # the table, then N learned addresses in one update
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time

from dnslib import DNSRecord

from endpoint_agent.clock import SystemClock
from endpoint_agent.dns.addrmap import AddressMap
from endpoint_agent.dns.asker import AskerLookup
from endpoint_agent.dns.forwarder import Forwarder
from endpoint_agent.dns.judge import FilterState, PolicyJudge
from endpoint_agent.enforce.netfilter import ConnectionRule, ConnectionTable, NftCli
from endpoint_agent.policy import compile_policy, parse_policy
from endpoint_agent.types import Endpoint
from tests.support.dns_zone import serve as serve_zone

LISTEN = Endpoint("127.0.0.153", 53)
UPSTREAM = Endpoint("127.0.0.2", 53)
NAME = "site-a.test"


def _policy(rules: int) -> str:
    lines = ["name: bench-dns", "version: 1", "mode: enforce", "rules:"]
    for i in range(rules):
        lines.append(
            f"  - {{id: r{i}, action: block, network: {{domain: ['*.blocked{i}.test', 'b{i}.test']}}}}"
        )
    return "\n".join(lines) + "\n"


def serve(rules: int) -> None:
    serve_zone(UPSTREAM.ip, UPSTREAM.port, {NAME: "127.0.0.2"})
    clock = SystemClock()
    judge = PolicyJudge(
        clock=clock,
        listen=LISTEN,
        addresses=AddressMap(clock),
        asker=AskerLookup(clock),
        record=lambda violations: None,
    )
    judge.update(FilterState.of(compile_policy(parse_policy(_policy(rules), "bench")), 1, True))
    Forwarder(LISTEN, [UPSTREAM], judge, clock=clock).start()
    print("ready", flush=True)
    threading.Event().wait()


def load(seconds: float, window: int) -> None:
    query = DNSRecord.question(NAME, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.connect((LISTEN.ip, LISTEN.port))
        for _ in range(50):  # warm: the first answer comes from upstream, the rest from the cache
            s.send(query.pack())
            s.recv(4096)
        latencies = []
        for i in range(2000):
            query.header.id = i
            data = query.pack()
            t0 = time.perf_counter()
            s.send(data)
            s.recv(4096)
            latencies.append(time.perf_counter() - t0)
        # Throughput: keep `window` queries in flight for `seconds`.
        s.setblocking(False)
        packet = query.pack()
        sent = answered = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            while sent - answered < window:
                s.send(packet)
                sent += 1
            try:
                while True:
                    s.recv(4096)
                    answered += 1
            except BlockingIOError:
                time.sleep(0)
        elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": sorted(latencies)[int(len(latencies) * 0.99)] * 1000,
                "qps": answered / elapsed,
                "lost": sent - answered,
            }
        )
    )


def nft(addresses: int) -> None:
    table = ConnectionTable(NftCli(), exempt=[UPSTREAM])
    rule = ConnectionRule(index=0, rule_id="bench", domains=True, v4=("192.0.2.0/24",))
    table.apply([rule])
    answers = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 300.0) for i in range(addresses)]
    t0 = time.perf_counter()
    table.learn(0, answers)
    elapsed = time.perf_counter() - t0
    listing = json.loads(NftCli().list_table() or "{}")
    count = sum(len(item["set"].get("elem", [])) for item in listing.get("nftables", []) if "set" in item)
    table.remove()
    print(json.dumps({"seconds": elapsed, "elements": count}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("serve").add_argument("--rules", type=int, default=1000)
    p = sub.add_parser("load")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--window", type=int, default=32)
    sub.add_parser("nft").add_argument("--addresses", type=int, default=10_000)
    args = parser.parse_args(argv)
    if args.what == "serve":
        serve(args.rules)
    elif args.what == "load":
        load(args.seconds, args.window)
    else:
        nft(args.addresses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
