"""Server CPU per request on the agents' hot paths: policy poll (304), heartbeat, health check.

The real server under uvicorn (SQLite, in a temporary directory), one enrolled host, one
published policy; each request kind is sent N times from this process (raw HTTP/1.1, so the
client costs little) over a few keep-alive sockets, and the poll and heartbeat also each on a
NEW connection (as an agent polling once a minute sends them), and the server process's own CPU
time (/proc/PID/stat) is divided by the number of answers. CPU time, not wall time: what the
server spends does not depend on how busy the rest of the machine is (much less than latency does).

Two servers at once: with uvicorn's own HTTP protocol (ENDPOINT_SERVER_NODE_PROTOCOL=off: the
first layer answers in ASGI), and as `serve` runs (server_stub/nodeprotocol.py: answered in the
parser's callbacks); each kind is measured in turns on the two (ROUNDS), so a change in the
machine's load falls on both alike. Targets: a 304 poll within one core's 1/3000 s (>= 3,000
polls/s per server core), no dearer than /healthz; a poll and a heartbeat on new connections
within a core at 50,000 hosts' rate (1,750 requests/s); and the node protocol's new-connection
poll and heartbeat no dearer than uvicorn's (the ratio printed shows by how much less).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.report import Target, targets_block

SUMMARY = "server CPU per request: 304 policy poll, heartbeat, /healthz (real uvicorn, SQLite)"
POLLS_PER_CORE = 3000.0
# A fleet of 50,000 hosts per core at the default intervals: a poll and a heartbeat a minute each
# (and an upload from the noisy tenth), every one on a new connection -- 1,750 requests/s per core.
FLEET_REQUESTS_PER_CORE = 50_000 * 2.1 / 60
PROTOCOLS = {"uvicorn's protocol": "off", "node protocol": ""}  # ENDPOINT_SERVER_NODE_PROTOCOL
KINDS = ("/healthz", "304 policy poll", "heartbeat", "304 poll, new conn", "heartbeat, new conn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hotpath")
    group.add_argument("--hotpath-requests", type=int, default=4000, help="requests of each kind (4000)")
    group.add_argument("--hotpath-connections", type=int, default=8, help="keep-alive sockets (8)")
    group.add_argument(
        "--hotpath-new", type=int, default=2000, help="polls and heartbeats each on a new connection (2000)"
    )


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


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


def _hammer(
    port: int, request: bytes, total: int, connections: int, *, new: bool = False
) -> dict[bytes, int]:
    """`total` requests over `connections` threads: kept-alive sockets, or (`new`) one per request."""
    statuses: dict[bytes, int] = {}
    lock = threading.Lock()

    def worker(count: int) -> None:
        pending = bytearray()
        sock = None if new else socket.create_connection(("127.0.0.1", port), timeout=60)
        try:
            for _ in range(count):
                if new:
                    with socket.create_connection(("127.0.0.1", port), timeout=60) as fresh:
                        status = _exchange(fresh, request, pending)
                    pending.clear()
                else:
                    assert sock is not None
                    status = _exchange(sock, request, pending)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=worker, args=(total // connections,)) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


ROUNDS = 4  # each kind is measured in turns on the two servers: the machine's load falls on both alike


@contextlib.contextmanager
def _serving(protocol: str) -> Iterator[tuple[int, int, dict[str, bytes]]]:
    """A server with ENDPOINT_SERVER_NODE_PROTOCOL=`protocol`: (pid, port, the request of each kind)."""
    from tests.support.server import run_server
    from tests.support.server_policies import policy_yaml

    unlimited = ["--rate-limit", "1000000", "--rate-burst", "1000000"]
    env = {"ENDPOINT_SERVER_NODE_PROTOCOL": protocol}
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_server(Path(tmp), extra_args=unlimited, secrets_env=env) as server,
    ):
        host = server.enroll("bench-ws")
        if server.publish(policy_yaml(1)).status_code != 200:
            raise RuntimeError("could not publish the bench policy")
        with server.client(host.node_key) as client:
            etag = client.get("/policy").headers["etag"]
        auth = f"Authorization: Bearer {host.node_key}\r\n"
        beat = json.dumps({"agent_version": "1.0", "mode": "enforce", "counters": {"scans": 1}}).encode()
        poll = f"GET /api/v1/policy HTTP/1.1\r\nHost: bench\r\n{auth}If-None-Match: {etag}\r\n\r\n".encode()
        heartbeat = (
            f"POST /api/v1/heartbeat HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(beat)}\r\n\r\n"
        ).encode() + beat
        requests = {
            "/healthz": b"GET /api/v1/healthz HTTP/1.1\r\nHost: bench\r\n\r\n",
            "304 policy poll": poll,
            "heartbeat": heartbeat,
            "304 poll, new conn": poll,
            "heartbeat, new conn": heartbeat,
        }
        yield server.pid, int(server.base_url.rsplit(":", 1)[1]), requests


def run(args: argparse.Namespace) -> list[Target]:
    connections = args.hotpath_connections
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(_serving(env)) for name, env in PROTOCOLS.items()}
        for _pid, port, requests in servers.values():
            _hammer(port, requests["/healthz"], 400, connections)  # warm up
        # [cpu seconds, kernel seconds, answers, wall seconds] of each protocol and kind
        spent = {name: {kind: [0.0, 0.0, 0, 0.0] for kind in KINDS} for name in servers}
        statuses: dict[str, dict[str, Counter[str]]] = {
            name: {k: Counter() for k in KINDS} for name in servers
        }
        for kind in KINDS:
            new = kind.endswith("new conn")
            count = (args.hotpath_new if new else args.hotpath_requests) // ROUNDS
            for turn in range(ROUNDS):
                order = list(servers) if turn % 2 == 0 else list(reversed(servers))
                for name in order:
                    pid, port, requests = servers[name]
                    (user, system), started = _cpu_seconds(pid), time.monotonic()
                    got = _hammer(port, requests[kind], count, connections, new=new)
                    wall = time.monotonic() - started
                    user_after, system_after = _cpu_seconds(pid)
                    total = spent[name][kind]
                    total[0] += user_after - user + system_after - system
                    total[1] += system_after - system
                    total[2] += sum(got.values())
                    total[3] += wall
                    statuses[name][kind].update({k.decode(): v for k, v in got.items()})
    print(f"  {'':<20} {'':<20} {'server CPU/request':>18} {'answers/s (wall)':>17}  statuses")
    cpu: dict[str, dict[str, float]] = {}
    for name in servers:
        cpu[name] = {}
        for kind, (seconds, kernel, answered, wall) in spent[name].items():
            cpu[name][kind] = seconds / answered
            per, in_kernel = seconds / answered * 1e6, kernel / answered * 1e6
            used = f"{per:>6.0f} us ({in_kernel:.0f} kernel) {answered / wall:>9.0f}/s"
            print(f"  {name:<20} {kind:<20} {used}  {dict(statuses[name][kind])}")
    before, now_cpu = cpu["uvicorn's protocol"], cpu["node protocol"]
    print(f"  {'':<20} {'uvicorn protocol':>18} {'node protocol':>15} {'after/before':>13}")
    for name in now_cpu:
        was, now = before[name] * 1e6, now_cpu[name] * 1e6
        print(f"  {name:<20} {was:>15.0f} us {now:>12.0f} us {now / was:>13.2f}")
    kept, fresh = 1 / now_cpu["304 policy poll"], 1 / now_cpu["304 poll, new conn"]
    print(f"  => {kept:.0f} polls/s per server core kept alive, {fresh:.0f} on new connections")
    targets = [
        Target("304 poll CPU x 3000 polls/s (<= 1 core)", now_cpu["304 policy poll"] * POLLS_PER_CORE, 1.0),
        Target("304 poll CPU / /healthz CPU", now_cpu["304 policy poll"] / now_cpu["/healthz"], 1.0),
        Target(
            "new-conn poll+heartbeat CPU x 50k hosts/core",
            (now_cpu["304 poll, new conn"] + now_cpu["heartbeat, new conn"]) / 2 * FLEET_REQUESTS_PER_CORE,
            1.0,
        ),
        Target(
            "new-conn poll CPU: node protocol / uvicorn's",
            now_cpu["304 poll, new conn"] / before["304 poll, new conn"],
            1.0,
        ),
        Target(
            "new-conn heartbeat CPU: node protocol / uvicorn's",
            now_cpu["heartbeat, new conn"] / before["heartbeat, new conn"],
            1.0,
        ),
    ]
    print(targets_block(targets))
    return targets
