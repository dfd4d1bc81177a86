"""The real endpoint-server, under uvicorn, in a subprocess on 127.0.0.1 (for integration tests).

    with run_server(tmp_path) as server:             # or the `live_server` pytest fixture
        host = server.enroll("ws-1")
        server.publish(POLICY_YAML)                  # signed with the server's test key
        server.client(host.node_key).get("/policy")

Each server gets a free port, fresh random secrets, a fresh signing key pair and its own data
directory; it is stopped (SIGTERM, then SIGKILL, by PID) however the test ends. PostgreSQL:
`fresh_pg_database()` makes a throwaway database on ENDPOINT_TEST_PG_URL (`pg_url_or_skip()`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.reaper import die_with_parent
from tests.support.tls import TlsFiles

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
API = "/api/v1"
PG_URL_ENV = "ENDPOINT_TEST_PG_URL"
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class EnrolledHost:
    host_id: str
    node_key: str
    hostname: str
    machine_id: str


@dataclass
class LiveServer:
    base_url: str  # http://127.0.0.1:PORT
    admin_token: str
    reader_token: str
    enroll_secret: str
    private_key: Path
    public_key: Path
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ca: Path | None = None  # served over https with a certificate of this CA

    @property
    def api_url(self) -> str:
        return self.base_url + API

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30.0, verify=verify)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def reader(self) -> httpx.Client:
        return self.client(self.reader_token)

    def enroll(
        self, hostname: str, machine_id: str | None = None, node_key: str | None = None
    ) -> EnrolledHost:
        """Enroll (a known machine id again only with its current `node_key`: a rotation)."""
        machine_id = machine_id or uuid.uuid4().hex
        body = {"hostname": hostname, "machine_id": machine_id}
        if node_key is not None:
            body["node_key"] = node_key
        with self.client(self.enroll_secret) as c:
            r = c.post("/enroll", json=body)
        r.raise_for_status()
        body = r.json()
        return EnrolledHost(body["host_id"], body["node_key"], hostname, machine_id)

    def sign(self, policy_yaml: str, *, fleet_id: str = "default") -> bytes:
        from endpoint_agent.policy import parse_policy
        from endpoint_contract.envelope import load_private_key, sign_policy

        policy = parse_policy(policy_yaml, "<test policy>")
        return sign_policy(policy, [load_private_key(self.private_key)], fleet_id)

    def publish(self, policy_yaml: str, *, rollout: int = 100, fleet_id: str = "default") -> httpx.Response:
        """PUT a policy signed with this server's trusted test key; returns the raw response."""
        envelope = self.sign(policy_yaml, fleet_id=fleet_id).decode()
        with self.admin() as c:
            return c.put("/policy", json={"envelope": envelope, "rollout_percent": rollout})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


WRITE_BEHIND_DEADLINE = 20.0


def written_behind(read: Callable[[], T], ready: Callable[[T], bool]) -> T:
    """`read()` again until `ready(reading)` holds, or the deadline passes; the last reading.

    Heartbeats and contact times reach the database up to --write-behind (2 s) after the request
    (server_stub/writebehind.py); what reads the database (/hosts, /metrics) sees them then.
    """
    deadline = time.monotonic() + WRITE_BEHIND_DEADLINE
    while True:
        reading = read()
        if ready(reading) or time.monotonic() > deadline:
            return reading
        time.sleep(0.1)


def server_command(port: int, data_dir: Path, public_keys: Sequence[Path], db_url: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "server_stub", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--log-level", "warning"]
    for key in public_keys:
        cmd += ["--public-key", str(key)]
    if db_url:
        cmd += ["--db", db_url]
    return cmd


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that imports this repository's packages (installed or not)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def make_keys(key_dir: Path) -> tuple[Path, Path]:
    from endpoint_admin.keygen import write_keypair

    pair = write_keypair(key_dir)
    return pair.private_key, pair.public_key


@contextlib.contextmanager
def run_server(
    workdir: Path,
    *,
    db_url: str | None = None,
    extra_args: Sequence[str] = (),
    public_keys: Sequence[Path] = (),
    secrets_env: dict[str, str] | None = None,
    tls: TlsFiles | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[LiveServer]:
    """Start the server, wait for /healthz, yield it; always stop it (and show its log on failure)."""
    workdir.mkdir(parents=True, exist_ok=True)
    private_key, public_key = make_keys(workdir / "keys")
    tokens = {
        "ENDPOINT_SERVER_ADMIN_TOKEN": "adm-" + secrets.token_urlsafe(24),
        "ENDPOINT_SERVER_READER_TOKEN": "rdr-" + secrets.token_urlsafe(24),
        "ENDPOINT_SERVER_ENROLL_SECRET": "enr-" + secrets.token_urlsafe(24),
    }
    tokens.update(secrets_env or {})
    data_dir = workdir / "data"
    log_path = workdir / "server.log"
    last_log = ""
    # A free port may be taken between choosing and binding; try a few.
    for _attempt in range(3):
        port = free_port()
        cmd = server_command(port, data_dir, [public_key, *public_keys], db_url) + list(extra_args)
        if tls is not None:
            cmd += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=subprocess_env(tokens),
                cwd=workdir,
                preexec_fn=die_with_parent(),
            )
        server = LiveServer(
            base_url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
            admin_token=tokens["ENDPOINT_SERVER_ADMIN_TOKEN"],
            reader_token=tokens["ENDPOINT_SERVER_READER_TOKEN"],
            enroll_secret=tokens["ENDPOINT_SERVER_ENROLL_SECRET"],
            private_key=private_key,
            public_key=public_key,
            data_dir=data_dir,
            log_path=log_path,
            process=proc,
            ca=tls.ca if tls else None,
        )
        try:
            if wait_healthy(proc, server.base_url, startup_timeout, ca=server.ca):
                yield server
                return
            last_log = server.log()
            if "address already in use" not in last_log.lower():
                break
        finally:
            stop_server(proc)
    raise RuntimeError(f"endpoint-server did not start; its output:\n{last_log}")


def wait_healthy(
    proc: subprocess.Popen[bytes], base_url: str, timeout: float = STARTUP_TIMEOUT, ca: Path | None = None
) -> bool:
    """True once GET /api/v1/healthz answers 200; False if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
    with httpx.Client(timeout=2.0, verify=verify) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if http.get(base_url + API + "/healthz").status_code == 200:
                    return True
            time.sleep(0.05)
    return False


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM (uvicorn shuts down cleanly), then SIGKILL; always reaped. By PID only."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return proc.wait(timeout)


def secrets_of(server: LiveServer) -> dict[str, str]:
    """`server`'s secrets as environment, for `run_server(secrets_env=...)`: a replica of it."""
    return {
        "ENDPOINT_SERVER_ADMIN_TOKEN": server.admin_token,
        "ENDPOINT_SERVER_READER_TOKEN": server.reader_token,
        "ENDPOINT_SERVER_ENROLL_SECRET": server.enroll_secret,
    }


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A running endpoint-server on SQLite in tmp_path (import this fixture into a conftest)."""
    with run_server(tmp_path / "server") as server:
        yield server


# --- PostgreSQL -------------------------------------------------------------------------------


def pg_url_or_skip() -> str:
    """ENDPOINT_TEST_PG_URL, or skip -- except in CI (CI=true), where a missing database fails."""
    url = os.environ.get(PG_URL_ENV)
    if url:
        return url
    reason = f"{PG_URL_ENV} is not set (run .ci/postgres.sh and export the URL it documents)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests must run in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of this kind ("sqlite": a file under tmp_path; else PostgreSQL or skip)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with fresh_pg_database(pg_url_or_skip()) as url:
        yield url


@contextlib.contextmanager
def fresh_pg_database(base_url: str) -> Iterator[str]:
    """A new, empty database on the server of `base_url`; dropped afterwards. Yields its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin_url = make_url(base_url).set(drivername="postgresql")
    name = "ept_" + uuid.uuid4().hex[:16]
    conninfo = admin_url.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: [a-z0-9_] only
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_pg_database(conninfo, name)


def _drop_pg_database(conninfo: str, name: str, attempts: int = 20) -> None:
    """DROP a test database, retrying while a backend we may not end still holds it."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        for attempt in range(attempts):
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                # FORCE may not end a backend of another role (an autovacuum worker busy on a big
                # fill); a plain DROP asks autovacuum to stop and waits for it a few seconds.
                try:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    return
                except psycopg.errors.ObjectInUse:
                    if attempt == attempts - 1:
                        raise
                    time.sleep(0.5)
