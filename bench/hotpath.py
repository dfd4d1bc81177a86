"""Server CPU per request on the agents' hot paths: policy poll (304), heartbeat, health check.

The real server under uvicorn (SQLite, in a temporary directory), one enrolled host, one
published policy; each request kind is sent N times over a few keep-alive sockets from this
process (raw HTTP/1.1, so the client costs little), and the server process's own CPU time
(/proc/PID/stat) is divided by the number of answers. CPU time, not wall time: what the server
spends does not depend on how busy the rest of the machine is (much less than latency does).
Target: a 304 poll within one core's 1/3000 s (>= 3,000 polls/s per server core), and no dearer
than /healthz (which touches no database either).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from bench.report import Target, targets_block

SUMMARY = "server CPU per request: 304 policy poll, heartbeat, /healthz (real uvicorn, SQLite)"
POLLS_PER_CORE = 3000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hotpath")
    group.add_argument("--hotpath-requests", type=int, default=4000, help="requests of each kind (4000)")
    group.add_argument("--hotpath-connections", type=int, default=8, help="keep-alive sockets (8)")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _exchange(sock: socket.socket, request: bytes, pending: bytearray) -> bytes:
    """Send one request, read one answer (headers and Content-Length body); its status code."""
    sock.sendall(request)
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += sock.recv(65536)
    pending[:] = rest[length:]
    return head.split(b" ", 2)[1]


def _hammer(port: int, request: bytes, total: int, connections: int) -> dict[bytes, int]:
    statuses: dict[bytes, int] = {}
    lock = threading.Lock()

    def worker(count: int) -> None:
        pending = bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            for _ in range(count):
                status = _exchange(sock, request, pending)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker, args=(total // connections,)) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def run(args: argparse.Namespace) -> list[Target]:
    from tests.support.server import run_server
    from tests.support.server_policies import policy_yaml

    total, connections = args.hotpath_requests, args.hotpath_connections
    unlimited = ["--rate-limit", "1000000", "--rate-burst", "1000000"]
    with tempfile.TemporaryDirectory() as tmp, run_server(Path(tmp), extra_args=unlimited) as server:
        host = server.enroll("bench-ws")
        if server.publish(policy_yaml(1)).status_code != 200:
            raise RuntimeError("could not publish the bench policy")
        with server.client(host.node_key) as client:
            etag = client.get("/policy").headers["etag"]
        port = int(server.base_url.rsplit(":", 1)[1])
        auth = f"Authorization: Bearer {host.node_key}\r\n"
        beat = json.dumps({"agent_version": "1.0", "mode": "enforce", "counters": {"scans": 1}}).encode()
        requests = {
            "/healthz": b"GET /api/v1/healthz HTTP/1.1\r\nHost: bench\r\n\r\n",
            "304 policy poll": (
                f"GET /api/v1/policy HTTP/1.1\r\nHost: bench\r\n{auth}If-None-Match: {etag}\r\n\r\n"
            ).encode(),
            "heartbeat": (
                f"POST /api/v1/heartbeat HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(beat)}\r\n\r\n"
            ).encode()
            + beat,
        }
        _hammer(port, requests["/healthz"], 400, connections)  # warm up
        cpu: dict[str, float] = {}
        print(f"  {'':<20} {'server CPU/request':>20} {'answers/s (wall)':>18}  statuses")
        for name, raw in requests.items():
            before, started = _cpu_seconds(server.pid), time.monotonic()
            statuses = _hammer(port, raw, total, connections)
            spent, wall = _cpu_seconds(server.pid) - before, time.monotonic() - started
            answered = sum(statuses.values())
            cpu[name] = spent / answered
            shown = {k.decode(): v for k, v in statuses.items()}
            print(f"  {name:<20} {cpu[name] * 1e6:>17.0f} us {answered / wall:>18.0f}  {shown}")
    print(f"  => {1 / cpu['304 policy poll']:.0f} polls/s per server core (client on the same machine)")
    targets = [
        Target("304 poll CPU x 3000 polls/s (<= 1 core)", cpu["304 policy poll"] * POLLS_PER_CORE, 1.0),
        Target("304 poll CPU / /healthz CPU", cpu["304 policy poll"] / cpu["/healthz"], 1.0),
    ]
    print(targets_block(targets))
    return targets
