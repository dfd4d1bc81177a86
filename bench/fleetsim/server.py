"""The server under test: `endpoint-server serve` under uvicorn on 127.0.0.1, its database, its CPU.

    with serving(workdir, db_url=None, seed_hosts=10_000, seed=7) as srv:   # SQLite in workdir
        srv.port, srv.enroll_secret, srv.etag
        meter = CpuMeter(srv.pid, srv.pg_database)

The database is made before the server starts: SQLite in the work directory, or a throwaway
PostgreSQL database on the server of `db_url`, dropped afterwards (tests/support/server.py).
`seed_hosts` hosts are written straight to the hosts table, as a fleet that enrolled earlier
(their node keys are `bench.fleetsim.agent.seeded_key`). A signed policy is published, so polls
get an ETag. The server is stopped (SIGTERM, then SIGKILL, by PID) however the block ends.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

from bench.fleetsim.agent import seeded_host_id, seeded_key
from server_stub import stallwatch
from server_stub.auth import hash_node_key

POLICY = """name: fleet
version: 1
mode: enforce
rules:
  - id: p2p-qbittorrent
    category: p2p
    action: block
    process:
      name: ["qbittorrent"]
"""
STALL_MS = 50.0  # the server logs each event-loop stall longer than this (server_stub/stallwatch.py)
# The shared background processes of a PostgreSQL server (its backends carry the database name).
_PG_SHARED = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "wal writer")


@dataclass(frozen=True)
class RunningServer:
    pid: int
    port: int
    enroll_secret: str
    admin_token: str
    etag: str
    db_kind: str  # "sqlite" or "postgresql"
    pg_database: str | None
    log_path: Path | None = None  # the server's output (its stall lines: server_stub/stallwatch.py)


def seed_hosts(db_url: str, count: int, seed: int) -> None:
    """`count` enrolled hosts (indices 0..count-1), written in bulk; migrates an empty database first."""
    from server_stub.store import Store
    from server_stub.store.tables import hosts

    store = Store.open(db_url)
    try:
        now = datetime.now(UTC)
        chunk = 5000
        for start in range(0, count, chunk):
            rows = [
                {
                    "host_id": seeded_host_id(seed, i),
                    "machine_id": f"fleet-{seed}-{i}",
                    "hostname": f"ws-{i:06d}",
                    "node_key_hash": hash_node_key(seeded_key(seed, i)),
                    "enrolled_at": now - timedelta(days=30),
                    "last_seen": now - timedelta(minutes=1),
                    "agent_version": "0.1.0",
                    "policy_version": 1,
                    "mode": "enforce",
                }
                for i in range(start, min(start + chunk, count))
            ]
            with store.engine.begin() as conn:
                conn.execute(hosts.insert(), rows)
    finally:
        store.close()


@contextlib.contextmanager
def serving(
    workdir: Path, *, db_url: str | None, seed_hosts_n: int, seed: int, extra_args: Sequence[str] = (),
    stall_ms: float = STALL_MS,
) -> Iterator[RunningServer]:  # fmt: skip
    from server_stub.store import sqlite_url
    from tests.support.server import fresh_pg_database, run_server

    with contextlib.ExitStack() as stack:
        pg_database = None
        if db_url:
            url = stack.enter_context(fresh_pg_database(db_url))
            pg_database = url.rsplit("/", 1)[1].split("?")[0]
        else:
            (workdir / "data").mkdir(parents=True, exist_ok=True)
            url = sqlite_url(workdir / "data")
        seed_hosts(url, seed_hosts_n, seed)
        server = stack.enter_context(
            # A loaded machine (the benchmark runs niced) may take longer than a test allows.
            run_server(
                workdir,
                db_url=url if db_url else None,
                extra_args=list(extra_args),
                startup_timeout=120,
                secrets_env={stallwatch.ENV: f"{stall_ms:g}"},
            )
        )
        answer = server.publish(POLICY)
        if answer.status_code != 200:
            raise RuntimeError(f"publishing the bench policy: HTTP {answer.status_code} {answer.text[:200]}")
        etag = ""
        if seed_hosts_n:
            with server.client(seeded_key(seed, 0)) as c:
                etag = c.get("/policy").headers.get("etag", "")
        yield RunningServer(
            pid=server.pid,
            port=int(server.base_url.rsplit(":", 1)[1]),
            enroll_secret=server.enroll_secret,
            admin_token=server.admin_token,
            etag=etag,
            db_kind="postgresql" if db_url else "sqlite",
            pg_database=pg_database,
            log_path=server.log_path,
        )


def wait_idle(port: int, timeout: float = 30.0) -> None:
    """Until the server answers /healthz again (after an overload its queue drains)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"http://127.0.0.1:{port}/api/v1/healthz").status_code == 200:
                    return
            time.sleep(0.2)


@dataclass(frozen=True)
class CpuSample:
    wall: float
    server: float  # CPU seconds, cumulative
    db: float
    sim: float
    machine: float = 0.0  # CPU seconds busy on the whole machine (every process), cumulative
    overflows: int = 0  # the kernel's count of connections dropped from full accept queues
    syn_retrans: int = 0  # SYNs sent again (a client's connect waiting 1 s, 3 s, ...)
    rto: int = 0  # retransmission timeouts (a segment, SYN included, sent again after waiting)
    steal: float = 0.0  # CPU seconds the hypervisor took from this virtual machine, cumulative
    server_majflt: int = 0  # the server's major page faults (pages read back from disk), cumulative
    # The server's CPU seconds by thread name, cumulative (threads_line)
    server_threads: tuple[tuple[str, float], ...] = ()

    def others_since(self, earlier: CpuSample) -> float:
        """Cores used by every process but the server, its database and the simulator."""
        span = max(self.wall - earlier.wall, 1e-9)
        return max(0.0, (self.machine - earlier.machine) / span - sum(self.cores_since(earlier)))

    def steal_since(self, earlier: CpuSample) -> float:
        """Cores the hypervisor took from this machine (its vCPUs not run: nobody here ran)."""
        return max(0.0, (self.steal - earlier.steal) / max(self.wall - earlier.wall, 1e-9))

    def machine_line(self, earlier: CpuSample) -> str:
        """The machine around the server: what else used its cores, and what the kernel dropped
        (machine-wide counters: other listeners count too)."""
        span = max(self.wall - earlier.wall, 1e-9)
        busy = (self.machine - earlier.machine) / span
        return (
            f"    machine: {busy:.2f} of {psutil.cpu_count() or 1} cores busy, "
            f"{self.others_since(earlier):.2f} of them by processes other than the server, its database "
            f"and the simulator; the hypervisor took {self.steal_since(earlier):.2f} cores (steal); the "
            f"server had {self.server_majflt - earlier.server_majflt:,} major page faults; "
            "kernel (all listeners): "
            f"{self.overflows - earlier.overflows:,} connections dropped from a full accept queue, "
            f"{self.syn_retrans - earlier.syn_retrans:,} SYNs sent again, {self.rto - earlier.rto:,} "
            "retransmission timeouts"
        )

    def threads_line(self, earlier: CpuSample) -> str:
        """The server's cores by thread (named by the server: server_stub/periodic.py
        name_os_thread; "loop" is each process's main thread, "other" the unnamed ones)."""
        span = max(self.wall - earlier.wall, 1e-9)
        before = dict(earlier.server_threads)
        used = sorted(
            ((name, (cpu - before.get(name, 0.0)) / span) for name, cpu in self.server_threads),
            key=lambda entry: -entry[1],
        )
        shown = ", ".join(f"{name} {cores:.3f}" for name, cores in used if cores >= 0.0005)
        return f"    server threads (cores): {shown or '-'}"

    def cores_since(self, earlier: CpuSample) -> tuple[float, float, float]:
        """Cores used (CPU seconds per wall second) by the server, the database and the simulator."""
        span = max(self.wall - earlier.wall, 1e-9)
        return (
            (self.server - earlier.server) / span,
            (self.db - earlier.db) / span,
            (self.sim - earlier.sim) / span,
        )


class CpuMeter:
    """CPU time of the server (and its worker processes), of PostgreSQL working for its database
    (that database's backends and the server's shared background writers), and of the simulator."""

    def __init__(self, server_pid: int, pg_database: str | None) -> None:
        self._server_pid = server_pid
        self._pg_database = pg_database
        self._sim_pids: list[int] = []
        # pid -> last CPU seconds seen: a process that exits keeps what it used.
        self._seen: dict[str, dict[int, float]] = {"server": {}, "db": {}, "sim": {}}
        self._threads: dict[int, tuple[str, float]] = {}  # server thread id -> (name, CPU s), kept when gone

    def add_sim(self, pids: list[int]) -> None:
        self._sim_pids = pids

    def sample(self) -> CpuSample:
        wall = time.monotonic()
        servers = self._server_processes()
        self._account("server", servers)
        for proc in servers:
            self._threads.update(_threads(proc.pid))
        self._account("db", self._db_processes())
        self._account("sim", [p for pid in self._sim_pids if (p := _process(pid)) is not None])
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + sum(getattr(t, k, 0.0) for k in ("irq", "softirq"))
        tcp = _tcp_counters()
        server, db, sim = (sum(self._seen[k].values()) for k in ("server", "db", "sim"))
        return CpuSample(
            wall, server, db, sim, machine=busy,
            overflows=tcp.get("ListenOverflows", 0), syn_retrans=tcp.get("TCPSynRetrans", 0),
            rto=tcp.get("TCPTimeouts", 0), steal=getattr(t, "steal", 0.0),
            server_majflt=stallwatch.majflt(self._server_pid), server_threads=self._by_name(),
        )  # fmt: skip

    def _by_name(self) -> tuple[tuple[str, float], ...]:
        by_name: dict[str, float] = {}
        for name, cpu in self._threads.values():
            by_name[name] = by_name.get(name, 0.0) + cpu
        return tuple(sorted(by_name.items()))

    def _account(self, what: str, processes: list[psutil.Process]) -> None:
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                self._seen[what][proc.pid] = t.user + t.system

    def _server_processes(self) -> list[psutil.Process]:
        root = _process(self._server_pid)
        if root is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [root, *root.children(recursive=True)]
        return [root]

    def _db_processes(self) -> list[psutil.Process]:
        if self._pg_database is None:
            return []
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                title = " ".join(proc.info["cmdline"] or ())
                if not title.startswith("postgres:"):
                    continue
                if f" {self._pg_database} " in title or title.rstrip().endswith(_PG_SHARED):
                    found.append(proc)
        return found


def _tcp_counters() -> dict[str, int]:
    """The kernel's TcpExt counters (what `nstat` shows), zeros where unreadable."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    counters: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            counters.update(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    return counters


def _threads(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (name, CPU seconds) of process `pid`: its main thread is "loop", a thread
    the server did not name (the kernel shows the program's) "other"."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        program = Path(f"/proc/{pid}/comm").read_text().strip()  # what an unnamed thread shows
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(b")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
        if int(tid) == pid:
            name = "loop"
        elif name in (program, "libuv-worker"):
            name = "other"
        out[int(tid)] = (name, cpu)
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


__all__ = ["CpuMeter", "CpuSample", "RunningServer", "seed_hosts", "serving", "wait_idle"]
