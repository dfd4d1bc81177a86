"""A minimal HTTP BitTorrent tracker (BEP 3, BEP 23 compact peers) for loopback-only test swarms.

It only ever binds to a loopback address: the swarms it serves live in a network namespace that has nothing
but `lo`. Peers are remembered per info_hash from their announces (address = the announce's source address,
so clients bound to distinct 127.x addresses appear as distinct peers); `--peer` adds static peers that every
answer lists (the synthetic swarm members of `bench.detect.swarm`). It prints "ready", then one JSON line per
announce, so a harness can start a leecher only once the seeder is known.

    python -m bench.detect.tracker --host 127.0.0.1 --port 6970 --peer 127.0.1.1:41001 ...
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes

from bench.detect.bencode import Value, encode

ANNOUNCE_INTERVAL = 10


class PeerTable:
    """Peers per info_hash; thread-safe because the HTTP server answers from several threads."""

    def __init__(self, static_peers: list[tuple[str, int]]) -> None:
        self._static = static_peers
        self._peers: dict[bytes, dict[bytes, tuple[str, int]]] = {}
        self._lock = threading.Lock()

    def announce(
        self, info_hash: bytes, peer_id: bytes, addr: tuple[str, int], stopped: bool
    ) -> list[tuple[str, int]]:
        with self._lock:
            swarm = self._peers.setdefault(info_hash, {})
            if stopped:
                swarm.pop(peer_id, None)
            else:
                swarm[peer_id] = addr
            others = [a for pid, a in swarm.items() if pid != peer_id]
        return others + [p for p in self._static if p != addr]


def _query(raw: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for part in raw.split("&"):
        key, _, value = part.partition("=")
        out[key] = unquote_to_bytes(value.replace("+", " "))
    return out


def _compact(peers: list[tuple[str, int]]) -> bytes:
    return b"".join(socket.inet_aton(ip) + port.to_bytes(2, "big") for ip, port in peers)


def make_handler(table: PeerTable) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, raw = self.path.partition("?")
            if path != "/announce":
                self._reply(404, encode({b"failure reason": b"unknown path"}))
                return
            q = _query(raw)
            try:
                info_hash, peer_id, port = q["info_hash"], q["peer_id"], int(q["port"])
            except (KeyError, ValueError):
                self._reply(400, encode({b"failure reason": b"missing info_hash, peer_id or port"}))
                return
            stopped = q.get("event") == b"stopped"
            addr = (self.client_address[0], port)
            peers = table.announce(info_hash, peer_id, addr, stopped)
            # One line per announce on stdout: the harness waits for a seeder to be known.
            event = q.get("event", b"").decode(errors="replace")
            print(
                json.dumps({"announce": f"{addr[0]}:{addr[1]}", "event": event, "peers": len(peers)}),
                flush=True,
            )
            body: dict[bytes, Value] = {
                b"interval": ANNOUNCE_INTERVAL,
                b"min interval": ANNOUNCE_INTERVAL,
                b"peers": _compact(peers),
            }
            self._reply(200, encode(body))

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.detect.tracker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peer", action="append", default=[], type=_endpoint, help="static peer ip:port")
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("the test tracker binds to loopback addresses only")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(PeerTable(args.peer)))
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
