"""A harmless stand-in that looks like a P2P client: a copy of the Python interpreter under a BitTorrent
client's name, listening on a BitTorrent port on 127.0.0.1 only, doing nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

_LISTEN = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


class StandIn:
    def __init__(self, workdir: Path, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.exe = workdir / name
        shutil.copy2(os.path.realpath(sys.executable), self.exe)
        env = dict(os.environ, PYTHONHOME=sys.base_prefix)
        self.proc = subprocess.Popen(
            [str(self.exe), "-c", _LISTEN, str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError(f"stand-in {name} did not start (port {port} busy?)")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
