"""A tiny authoritative DNS server for a test zone (dnslib), run inside a loopback-only namespace.

    python -m tests.support.dns_zone --address 127.0.0.2 --port 53 \\
        --record site-a.test=127.0.0.2 --record blocked.test=127.0.0.3

Answers A records of the given names (TTL 300), NXDOMAIN with an SOA for other names, over UDP
and TCP, until killed. Prints "ready" once both listeners are bound.
"""

from __future__ import annotations

import argparse
import sys
import threading

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

TTL = 300


class TestZone(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: dict[str, str]) -> None:
        self._records = {name.lower().rstrip("."): ip for name, ip in records.items()}

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        ip = self._records.get(name)
        if ip is not None:
            if request.q.qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=TTL))
            return reply
        reply.header.rcode = RCODE.NXDOMAIN
        soa = SOA("ns.test.", "admin.test.", (1, 3600, 600, 86400, 60))
        reply.add_auth(RR(DNSLabel("test."), QTYPE.SOA, rdata=soa, ttl=60))
        return reply


def serve(address: str, port: int, records: dict[str, str]) -> list[DNSServer]:
    resolver = TestZone(records)
    quiet = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)
    servers = [
        DNSServer(resolver, address=address, port=port, logger=quiet),
        DNSServer(resolver, address=address, port=port, tcp=True, logger=quiet),
    ]
    for server in servers:
        server.start_thread()
    return servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="127.0.0.2")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--record", action="append", default=[], help="name=ipv4")
    args = parser.parse_args(argv)
    records = dict(item.split("=", 1) for item in args.record)
    serve(args.address, args.port, records)
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
