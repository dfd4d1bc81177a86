"""Several server processes as one: `serve --workers N`, rate limits shared through the database,
enrollment limited per host, per enroll credential and per address, and X-Forwarded-For trusted
only from a named proxy. Real servers under uvicorn on 127.0.0.1, SQLite file and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import (
    API,
    LiveServer,
    fresh_pg_database,
    pg_url_or_skip,
    run_server,
    secrets_of,
    subprocess_env,
)


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat_line = (entry / "stat").read_text()
                if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def workers_of(pid: int) -> list[int]:
    """uvicorn's worker processes under `pid` (multiprocessing also starts a resource tracker)."""
    return [c for c in children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def wait_until(probe: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_workers_share_one_port_migrate_once_and_stop_on_sigterm(tmp_path: Path) -> None:
    extra = ["--workers", "2", "--log-level", "info"]
    with run_server(tmp_path / "s", extra_args=extra, startup_timeout=120) as server:
        wait_until(lambda: len(workers_of(server.pid)) == 2)
        workers = workers_of(server.pid)
        # The parent migrated once, before the workers started; they found the schema current.
        assert server.log().count("applying schema migration 1:") == 1
        # Each worker read the validated arguments from a 0600 file, never from its command line.
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        args_file = Path(
            next(e for e in environ if e.startswith(b"ENDPOINT_SERVER_WORKER_ARGS="))
            .split(b"=", 1)[1]
            .decode()
        )
        assert stat.S_IMODE(args_file.stat().st_mode) == 0o600
        for pid in workers:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert server.enroll_secret.encode() not in cmdline
            assert server.admin_token.encode() not in cmdline
        with server.client() as c:
            for _ in range(20):
                assert c.get("/healthz", headers={"Connection": "close"}).status_code == 200
        host = server.enroll("ws-workers")
        with server.client(host.node_key) as c:  # the node key works on whichever worker answers
            for _ in range(10):
                assert c.get("/policy", headers={"Connection": "close"}).status_code == 404
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert not args_file.exists()
        assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
        assert "Finished server process" in server.log()  # each worker shut down cleanly


@pytest.mark.parametrize("value", ["0", "65", "two", "-1"])
def test_workers_out_of_range_is_one_line(tmp_path: Path, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server_stub", "serve", "--data-dir", str(tmp_path), "--workers", value],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers" in lines[0] and "1 to 64" in lines[0], done.stderr


# --- one limit across processes ----------------------------------------------------------------

RATE, BURST, FLOOD_SECONDS = 10, 10, 12.0


@contextlib.contextmanager
def two_processes(tmp_path: Path, backend: str, extra: list[str]) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two server processes on one database: a SQLite file or a fresh PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            url = stack.enter_context(fresh_pg_database(pg_url_or_skip()))
        else:
            url = f"sqlite:///{tmp_path / 'shared.db'}"
        a = stack.enter_context(run_server(tmp_path / "a", db_url=url, extra_args=extra))
        b = stack.enter_context(
            run_server(
                tmp_path / "b",
                db_url=url,
                extra_args=extra,
                public_keys=[a.public_key],
                secrets_env=secrets_of(a),
            )
        )
        yield a, b


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_one_credential_flooding_two_processes_gets_the_documented_rate(tmp_path: Path, backend: str) -> None:
    limits = ["--rate-limit", str(RATE), "--rate-burst", str(BURST)]
    with two_processes(tmp_path, backend, limits) as (a, b):
        key = a.enroll("ws-flood").node_key
        time.sleep(1.0)  # the enrollment's own bucket is not this key's
        statuses: dict[str, Counter[int]] = {"a": Counter(), "b": Counter()}
        start = threading.Barrier(5)
        stop_at: list[float] = []
        lock = threading.Lock()

        def hammer(name: str, server: LiveServer) -> None:
            with server.client(key) as c:
                start.wait()
                while time.monotonic() < stop_at[0]:
                    status = c.get("/policy").status_code
                    with lock:
                        statuses[name][status] += 1

        pairs = (("a", a), ("b", b)) * 2  # two clients on each process
        threads = [threading.Thread(target=hammer, args=pair) for pair in pairs]
        for t in threads:
            t.start()
        began = time.monotonic()
        stop_at.append(began + FLOOD_SECONDS)
        start.wait()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
    admitted = sum(n for c in statuses.values() for status, n in c.items() if status != 429)
    documented = BURST + RATE * elapsed
    # Both processes were asked for far more than the rate, and both refused some.
    assert sum(n for c in statuses.values() for n in c.values()) > 2 * documented, statuses
    assert all(c[429] > 0 for c in statuses.values()), statuses
    assert all(sum(c.values()) - c[429] > 0 for c in statuses.values()), statuses
    print(f"{backend}: admitted {admitted} in {elapsed:.1f} s; documented {documented:.0f} ({statuses})")
    assert documented * 0.8 <= admitted <= documented * 1.2, (admitted, documented, statuses)


# --- enrollment --------------------------------------------------------------------------------


def enroll_from(server: LiveServer, token: str, machine_id: str, source: str = "127.0.0.1") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=server.api_url, transport=transport, timeout=30) as c:
        return c.post(
            "/enroll",
            json={"hostname": "h-" + machine_id[:8], "machine_id": machine_id},
            headers={"Authorization": f"Bearer {token}"},
        )


def test_a_fleet_enrolls_with_one_secret_past_a_single_bucket(tmp_path: Path) -> None:
    # Defaults: 20/s and a burst of 100 per principal. One bucket for the fleet secret would refuse
    # most of these 400 hosts; each host has its own, and the secret's own bound is far above.
    with run_server(tmp_path / "s") as server:
        results: Counter[int] = Counter()
        lock = threading.Lock()

        def enroll_many(count: int) -> None:
            with server.client(server.enroll_secret) as c:
                for _ in range(count):
                    body = {"hostname": "fleet", "machine_id": uuid.uuid4().hex}
                    status = c.post("/enroll", json=body).status_code
                    with lock:
                        results[status] += 1

        threads = [threading.Thread(target=enroll_many, args=(100,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == Counter({200: 400})
        with server.reader() as c:
            assert len(c.get("/hosts").json()["items"]) == 400


def test_one_machine_id_enrolling_in_a_loop_is_refused_alone(tmp_path: Path) -> None:
    with run_server(tmp_path / "s", extra_args=["--rate-limit", "0.1", "--rate-burst", "3"]) as server:
        looping = uuid.uuid4().hex
        statuses = [enroll_from(server, server.enroll_secret, looping).status_code for _ in range(5)]
        assert statuses[:3] == [200, 409, 409]  # known machine id without its node key
        refused = enroll_from(server, server.enroll_secret, looping)
        assert statuses[3:] == [429, 429] and refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert enroll_from(server, server.enroll_secret, uuid.uuid4().hex).status_code == 200


def test_one_enroll_credential_and_one_address_are_bounded(tmp_path: Path) -> None:
    # --enroll-rate 0.1: the fleet secret enrolls one host per 10 s (burst 1), each address one per 20 s.
    with run_server(tmp_path / "s", extra_args=["--enroll-rate", "0.1"]) as server:
        with server.admin() as c:
            created = c.post("/enroll-tokens", json={"uses": 10, "expires_in": 3600})
        token = created.json()["token"]
        secret = server.enroll_secret
        assert enroll_from(server, secret, uuid.uuid4().hex, "127.0.0.1").status_code == 200
        assert enroll_from(server, secret, uuid.uuid4().hex, "127.0.0.1").status_code == 429
        # Another address, same secret: the credential is dry, whoever uses it.
        dry = enroll_from(server, secret, uuid.uuid4().hex, "127.0.0.2")
        assert dry.status_code == 429 and int(dry.headers["Retry-After"]) >= 1
        # A rollout's enroll token is a credential of its own.
        assert enroll_from(server, token, uuid.uuid4().hex, "127.0.0.2").status_code == 200
        # ... but that address has now used its share.
        assert enroll_from(server, token, uuid.uuid4().hex, "127.0.0.2").status_code == 429
        with server.reader() as c:
            assert len(c.get("/hosts").json()["items"]) == 2


# --- trusted proxies ---------------------------------------------------------------------------


def get_from(server: LiveServer, source: str, forwarded_for: str) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as c:
        headers = {
            "X-Forwarded-For": forwarded_for,
            "Authorization": "Bearer not-a-key-" + os.urandom(4).hex(),
        }
        return c.get(server.base_url + API + "/hosts", headers=headers).status_code


def test_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    extra = ["--trusted-proxy", "127.0.0.2", "--rate-limit", "0.1", "--rate-burst", "1"]
    with run_server(tmp_path / "s", extra_args=extra) as server:
        # From an untrusted peer the header is ignored: every attempt is 127.0.0.1's.
        assert get_from(server, "127.0.0.1", "10.0.0.1") == 401
        assert get_from(server, "127.0.0.1", "10.0.0.2") == 429
        # Through the trusted proxy, each client behind it has its own address limit.
        assert get_from(server, "127.0.0.2", "10.0.0.3") == 401
        assert get_from(server, "127.0.0.2", "10.0.0.4") == 401
        assert get_from(server, "127.0.0.2", "10.0.0.3") == 429


@pytest.mark.postgres
def test_servers_with_workers_starting_together_migrate_once(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from server_stub.store import normalize_url
    from server_stub.store.migrations import MIGRATIONS
    from tests.support.ports import free_ports
    from tests.support.server import make_keys, server_command, stop_server, wait_healthy

    _, pub = make_keys(tmp_path / "keys")
    env = subprocess_env({"ENDPOINT_SERVER_ADMIN_TOKEN": "a" * 20, "ENDPOINT_SERVER_ENROLL_SECRET": "e" * 20})
    with fresh_pg_database(pg_url_or_skip()) as url:
        procs: list[subprocess.Popen[bytes]] = []
        ports = free_ports(2)
        try:
            for i, port in enumerate(ports):  # both started before either is waited for
                cmd = [*server_command(port, tmp_path / f"d{i}", [pub], url), "--workers", "2"]
                with (tmp_path / f"server-{i}.log").open("wb") as log:
                    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            for proc, port in zip(procs, ports, strict=True):
                logs = [p.read_text() for p in tmp_path.glob("server-*.log")]
                assert wait_healthy(proc, f"http://127.0.0.1:{port}", timeout=120), logs
                wait_until(lambda proc=proc: len(workers_of(proc.pid)) == 2)
        finally:
            for proc in procs:
                stop_server(proc, timeout=30)
        assert [proc.returncode for proc in procs] == [0, 0]
        engine = sa.create_engine(normalize_url(url))
        try:
            with engine.connect() as conn:
                versions = conn.execute(sa.text("SELECT version FROM schema_version")).scalars().all()
        finally:
            engine.dispose()
        assert sorted(versions) == [m.version for m in MIGRATIONS]
