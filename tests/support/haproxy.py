"""Debian's haproxy in front of several server processes, on 127.0.0.1 (for replica tests).

    with Haproxy(tmp / "proxy", [server_a.url, server_b.url]) as proxy:   # agent: --server proxy.url

Round robin, a health check every 200 ms on /api/v1/healthz, failed connections retried on the
other server (`option redispatch`), the client's address passed in X-Forwarded-For (servers
started with `--trusted-proxy 127.0.0.1`). Runs in the foreground (-db); stopped by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from tests.support.ports import free_port
from tests.support.reaper import die_with_parent
from tests.support.server import stop_server

HAPROXY = "/usr/sbin/haproxy"


def haproxy_missing() -> str | None:
    """None when haproxy can run here, else why not (Debian package `haproxy`)."""
    if shutil.which(HAPROXY) is None:
        return f"{HAPROXY} not found: apt-get install haproxy"
    return None


def _config(port: int, upstreams: list[str]) -> str:
    servers = []
    for i, url in enumerate(upstreams):
        parts = urlsplit(url)
        servers.append(f"    server s{i} {parts.hostname}:{parts.port} check inter 200ms fall 1 rise 2")
    return "\n".join(
        [
            "global",
            "    maxconn 512",
            "defaults",
            "    mode http",
            "    timeout connect 1s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    retries 3",
            "    option redispatch 1",
            "    option forwardfor",
            "frontend api",
            f"    bind 127.0.0.1:{port}",
            "    default_backend servers",
            "backend servers",
            "    balance roundrobin",
            "    option httpchk GET /api/v1/healthz",
            "    retry-on conn-failure empty-response response-timeout",
            *servers,
            "",
        ]
    )


class Haproxy:
    def __init__(self, workdir: Path, upstreams: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(_config(self.port, upstreams))
        self.log_path = workdir / "haproxy.log"
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log_path.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("haproxy did not listen within 10 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Haproxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        stop_server(self._proc)  # SIGTERM, then SIGKILL; reaped
