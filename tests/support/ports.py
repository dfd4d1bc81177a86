"""Free loopback ports (for servers a test starts itself, e.g. uvicorn).

Racy by nature (another program may take the port before it is used); prefer binding port 0
and reading the address back, as spawn_named_process does, when the code under test allows.
"""

from __future__ import annotations

import socket
from typing import Literal


def free_port(proto: Literal["tcp", "udp"] = "tcp", host: str = "127.0.0.1") -> int:
    """A port nothing is bound to on `host` right now (127.0.0.1 or ::1)."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"tests only use loopback, not {host!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, proto: Literal["tcp", "udp"] = "tcp", host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports (all held open while choosing, so they differ)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    socks = [socket.socket(family, kind) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
