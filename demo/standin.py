"""A harmless stand-in that looks like a P2P client: a private copy of the Python interpreter under a
BitTorrent-like name, listening on a BitTorrent port on 127.0.0.1 only, doing nothing else."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from demo.procs import Children

_LISTEN = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

BITTORRENT_PORTS = range(6881, 6890)


def free_bittorrent_port() -> int:
    """A classic BitTorrent port (6881-6889) free on 127.0.0.1."""
    for port in BITTORRENT_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("every BitTorrent port 6881-6889 on 127.0.0.1 is busy")


class StandIn:
    def __init__(self, workdir: Path, name: str, port: int, children: Children) -> None:
        self.name = name
        self.port = port
        self.exe = Path(os.path.realpath(workdir)) / name  # the path the agent will see
        if not self.exe.exists():
            shutil.copy2(os.path.realpath(sys.executable), self.exe)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONHOME": os.pathsep.join(dict.fromkeys([sys.base_prefix, sys.base_exec_prefix])),
        }
        self.proc = children.start(
            name,
            [str(self.exe), "-s", "-S", "-c", _LISTEN, str(port)],
            env=env,
            cwd=workdir,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            children.stop(self.proc)
            raise RuntimeError(f"the stand-in {name} did not start (port {port} busy?)")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


__all__ = ["BITTORRENT_PORTS", "StandIn", "free_bittorrent_port"]
