"""The program inside every Python process the tests spawn (stdlib only, run as a script).

It reads what to open from the environment variable EA_TEST_CHILD (JSON), opens it, prints
one JSON line {"event": "ready", ...} with the addresses the kernel chose, then prints one
line per connection its TCP listeners accept ({"event": "accepted", ...}). It runs until
its stdin closes (the test process is gone, or the reaper closed it) or it is killed.
Extra command-line arguments are ignored: they exist so tests can give it a command line.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import threading

_lock = threading.Lock()
_keep: list[socket.socket] = []  # every socket stays open until the process ends


def emit(event: dict[str, object]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def addr(sock: socket.socket, remote: bool = False) -> list[object]:
    a = sock.getpeername() if remote else sock.getsockname()
    return [a[0], a[1]]


def open_listener(proto: str, host: str, port: int) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family_of(host), kind)
    _keep.append(sock)
    if family_of(host) == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    if proto == "tcp":
        sock.listen(1024)
    return sock


def open_client(proto: str, host: str, port: int) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family_of(host), kind)
    _keep.append(sock)
    sock.connect((host, port))
    return sock


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        _keep.append(conn)
        emit({"event": "accepted", "local": addr(conn), "remote": addr(conn, remote=True)})


def pairs(host: str, count: int) -> dict[str, object]:
    """`count` TCP connections to a listener of our own, both ends held here."""
    listener = open_listener("tcp", host, 0)
    client_ends, server_ends = [], []
    for _ in range(count):
        client = open_client("tcp", host, listener.getsockname()[1])
        server, _ = listener.accept()
        _keep.append(server)
        client_ends.append([addr(client), addr(client, remote=True)])
        server_ends.append([addr(server), addr(server, remote=True)])
    return {"listener": addr(listener), "clients": client_ends, "servers": server_ends}


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def main() -> None:
    spec = json.loads(os.environ.get("EA_TEST_CHILD", "{}"))
    raise_nofile(int(spec.get("nofile", 0)))
    ready: dict[str, object] = {
        "event": "ready",
        "pid": os.getpid(),
        "listen": [],
        "connect": [],
        "pairs": [],
    }
    for item in spec.get("listen", []):
        sock = open_listener(item["proto"], item["host"], item["port"])
        ready["listen"].append({"proto": item["proto"], "local": addr(sock)})  # type: ignore[attr-defined]
        if item["proto"] == "tcp" and item.get("accept", True):
            threading.Thread(target=serve, args=(sock,), daemon=True).start()
    for item in spec.get("connect", []):
        sock = open_client(item["proto"], item["host"], item["port"])
        ready["connect"].append(  # type: ignore[attr-defined]
            {"proto": item["proto"], "local": addr(sock), "remote": addr(sock, remote=True)}
        )
    for item in spec.get("pairs", []):
        ready["pairs"].append(pairs(item["host"], item["count"]))  # type: ignore[attr-defined]
    if "uid" in spec:
        drop_privileges(spec["uid"], spec["gid"])
    emit(ready)
    # Block until the parent side of stdin closes; the sockets stay open meanwhile.
    while sys.stdin.buffer.read(4096):
        pass


if __name__ == "__main__":
    main()
