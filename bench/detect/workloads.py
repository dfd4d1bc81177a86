"""Small loopback programs for the benign corpus (run inside a loopback-only namespace).

    python -m bench.detect.workloads http-server --port 18080 [--port 18081 ...]
    python -m bench.detect.workloads clients --target 127.0.0.1:18080 --sources 127.0.2.1 ... --protocol http
    python -m bench.detect.workloads sink --host 0.0.0.0 --port 443 [--udp]
    python -m bench.detect.workloads throttled-http --root DIR --port 18090 --rate 65536
    python -m bench.detect.workloads repeat --seconds 20 -- git clone ...
    python -m bench.detect.workloads gateway --port 18443 --backend 127.0.8.1:20001 ...
    python -m bench.detect.workloads short-connections --target 127.0.0.1:19090
    python -m bench.detect.workloads tunnels --port 18001 ... --upstream 127.0.0.1:6443
    python -m bench.detect.workloads media --peer 127.0.12.1:40100 ... --stun 127.0.12.9:3478
    python -m bench.detect.workloads multicast

Each prints "ready" once it listens or is connected, then runs until killed (`repeat`: until
its time is up). Every address must be a loopback one.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingTCPServer, ThreadingUDPServer
from typing import Any

REQUEST_EVERY = 0.3
BODY = b"ok\n" * 64


def _loopback(text: str) -> str:
    if text not in ("0.0.0.0", "::") and not ipaddress.ip_address(text).is_loopback:
        raise argparse.ArgumentTypeError(f"{text}: loopback addresses only")
    return text


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return _loopback(host), int(port)


# -- servers --------------------------------------------------------------------------------


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients hold their connection

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def http_server(args: argparse.Namespace) -> None:
    """One server per --port, all in this process (like a dev server with an API and a UI port)."""
    servers = [_Server((args.host, port), _Hello) for port in args.port]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()


class _Throttled(SimpleHTTPRequestHandler):
    """Static files at `rate` bytes/s, so a download stays on the wire across scans."""

    rate = 65536

    def copyfile(self, source: Any, outputfile: Any) -> None:
        chunk = max(1024, self.rate // 10)
        while data := source.read(chunk):
            outputfile.write(data)
            time.sleep(0.1)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def throttled_http(args: argparse.Namespace) -> None:
    root = Path(args.root)

    class Handler(_Throttled):
        rate = args.rate

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(root), **kw)

    server = _Server((args.host, args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


class _Hold(ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def sink(args: argparse.Namespace) -> None:
    """Accept TCP (and answer UDP) and hold: a stand-in for a TLS server on :443 (QUIC with --udp)."""
    import socketserver

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while self.request.recv(4096):
                self.request.sendall(b"x")

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(data[:1], self.client_address)

    servers: list[Any] = [_Hold((args.host, args.port), Tcp)]
    if args.udp:
        servers.append(ThreadingUDPServer((args.host, args.port), Udp))
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)


def _serve_tcp(host: str, port: int, handle: Any) -> threading.Thread:
    listener = socket.create_server((host, port), reuse_port=False, backlog=128)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def gateway(args: argparse.Namespace) -> None:
    """An API gateway: clients in on one high port; a pooled keep-alive connection to each backend,
    requests forwarded round-robin (backends on distinct addresses and distinct high ports)."""
    pool = [_connect(backend, None, socket.SOCK_STREAM) for backend in args.backend]
    locks = [threading.Lock() for _ in pool]
    turn = iter(range(1 << 62))

    def handle(client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                i = next(turn) % len(pool)
                with locks[i]:
                    pool[i].sendall(data)
                    reply = pool[i].recv(65536)
                client.sendall(reply)

    _serve_tcp(args.host, args.port, handle)
    print("ready", flush=True)
    while True:  # health checks on the pooled connections, as a gateway does
        for i, backend in enumerate(pool):
            with locks[i], contextlib.suppress(OSError):
                backend.sendall(b"health\n")
                backend.recv(65536)
        time.sleep(1.0)


def tunnels(args: argparse.Namespace) -> None:
    """`kubectl port-forward` style: local listeners, each tunnelled over a connection to one
    upstream (the API server) per accepted client."""

    def handle(client: socket.socket) -> None:
        upstream = _connect(args.upstream, None, socket.SOCK_STREAM)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    for port in args.port:
        _serve_tcp("127.0.0.1", port, handle)
    print("ready", flush=True)
    threading.Event().wait()


def short_connections(args: argparse.Namespace) -> None:
    """A build-cache client: 8 workers, each fetching artifacts over a new connection every time."""

    def worker() -> None:
        while True:
            with contextlib.suppress(OSError), _connect(args.target, None, socket.SOCK_STREAM) as sock:
                sock.sendall(_request("http", "cache"))
                sock.recv(65536)
                time.sleep(0.05)  # reading the artifact

    for _ in range(8):
        threading.Thread(target=worker, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def media(args: argparse.Namespace) -> None:
    """A WebRTC-like call: one UDP socket, media to each peer every 20 ms, STUN keepalives."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, 0))
    sock.setblocking(False)
    print("ready", flush=True)
    tick = 0
    while True:
        for peer in args.peer:
            with contextlib.suppress(OSError):
                sock.sendto(b"rtp" * 100, peer)
        if tick % 50 == 0:
            with contextlib.suppress(OSError):
                sock.sendto(b"stun-binding", args.stun)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
        tick += 1
        time.sleep(0.02)


MDNS = ("224.0.0.251", 5353)
SSDP = ("239.255.255.250", 1900)


def multicast(args: argparse.Namespace) -> None:
    """mDNS and SSDP: bound to 5353 and 1900, joined to their groups, announcing now and then."""
    socks = []
    for group, port in (MDNS, SSDP):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sock.setblocking(False)
        socks.append((sock, (group, port)))
    print("ready", flush=True)
    while True:
        for sock, dest in socks:
            with contextlib.suppress(OSError):
                sock.sendto(b"announce", dest)
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
        time.sleep(0.5)


def tcp_echo(args: argparse.Namespace) -> None:
    """Answer every read on each --listen address:port (backends, cluster nodes, an API server)."""

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                conn.sendall(b"ok\n")

    for host, port in args.listen:
        _serve_tcp(host, port, handle)
    print("ready", flush=True)
    threading.Event().wait()


def udp_echo(args: argparse.Namespace) -> None:
    """Answer every datagram on each --bind address:port (media peers, a STUN server)."""
    import select

    socks = []
    for host, port in args.bind:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        socks.append(sock)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select(socks, [], [])
        for sock in readable:
            with contextlib.suppress(OSError):
                data, peer = sock.recvfrom(65536)
                sock.sendto(data[:16], peer)


# -- clients --------------------------------------------------------------------------------


def _request(protocol: str, host: str) -> bytes:
    if protocol == "http":
        return f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    if protocol == "redis":
        return b"*1\r\n$4\r\nPING\r\n"
    return b"."


def _connect(target: tuple[str, int], source: str | None, proto: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = socket.socket(family, proto)
    if source:
        sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(target)
    return sock


def clients(args: argparse.Namespace) -> None:
    """One connection per (target, source address); a request every REQUEST_EVERY seconds on each."""
    pairs = [(t, s) for t in args.target for s in (args.sources or [None])]
    socks: list[socket.socket] = []
    for target, source in pairs:
        socks.append(_connect(target, source, socket.SOCK_STREAM))
        if args.udp:
            socks.append(_connect(target, source, socket.SOCK_DGRAM))
    print("ready", flush=True)
    while True:
        for sock in socks:
            try:
                sock.send(_request(args.protocol if sock.type == socket.SOCK_STREAM else "raw", "localhost"))
                sock.recv(65536)
            except OSError:
                pass
        time.sleep(REQUEST_EVERY)


def repeat(args: argparse.Namespace) -> None:
    """Run a command again and again (e.g. a git clone into a fresh directory) until time is up."""
    deadline = time.monotonic() + args.seconds
    scratch = Path(args.scratch) if args.scratch else None
    print("ready", flush=True)
    while time.monotonic() < deadline:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        subprocess.run(args.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=False)
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.detect.workloads")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("http-server")
    p.add_argument("--host", type=_loopback, default="0.0.0.0")
    p.add_argument("--port", type=int, action="append", required=True)
    p.set_defaults(run=http_server)
    p = sub.add_parser("throttled-http")
    p.add_argument("--host", type=_loopback, default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--rate", type=int, default=65536)
    p.set_defaults(run=throttled_http)
    p = sub.add_parser("sink")
    p.add_argument("--host", type=_loopback, default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--udp", action="store_true")
    p.set_defaults(run=sink)
    p = sub.add_parser("clients")
    p.add_argument("--target", action="append", required=True, type=_endpoint)
    p.add_argument("--sources", nargs="*", type=_loopback, default=[])
    p.add_argument("--protocol", choices=["http", "redis", "raw"], default="raw")
    p.add_argument("--udp", action="store_true", help="also a connected UDP socket per pair (QUIC-like)")
    p.set_defaults(run=clients)
    p = sub.add_parser("gateway")
    p.add_argument("--host", type=_loopback, default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", action="append", required=True, type=_endpoint)
    p.set_defaults(run=gateway)
    p = sub.add_parser("tunnels")
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--upstream", required=True, type=_endpoint)
    p.set_defaults(run=tunnels)
    p = sub.add_parser("short-connections")
    p.add_argument("--target", required=True, type=_endpoint)
    p.set_defaults(run=short_connections)
    p = sub.add_parser("media")
    p.add_argument("--host", type=_loopback, default="127.0.0.1")
    p.add_argument("--peer", action="append", required=True, type=_endpoint)
    p.add_argument("--stun", required=True, type=_endpoint)
    p.set_defaults(run=media)
    p = sub.add_parser("tcp-echo")
    p.add_argument("--listen", action="append", required=True, type=_endpoint)
    p.set_defaults(run=tcp_echo)
    p = sub.add_parser("udp-echo")
    p.add_argument("--bind", action="append", required=True, type=_endpoint)
    p.set_defaults(run=udp_echo)
    p = sub.add_parser("multicast")
    p.set_defaults(run=multicast)
    p = sub.add_parser("repeat")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--scratch", help="directory removed before each run")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(run=repeat)
    args = parser.parse_args(argv)
    if args.kind == "repeat" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    with contextlib.suppress(KeyboardInterrupt):
        args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
