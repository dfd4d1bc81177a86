"""Event ingest, in process: server CPU per event for `POST /api/v1/events` in batches of 50 and 500.

The real application (create_app: middleware, node-key auth, the route, the store) is driven
through ASGI calls from this process, with no socket and no HTTP client: what is measured is
what the server spends, not a load generator. Bodies are what the agent uploads (its events'
JSON text, endpoint_contract/events.py batch_body), prepared before the clock starts; each
host uploads its own batches, a few of them twice (a retry), so the idempotent path is measured
too. Printed per database and batch size: server CPU per event (this process, every thread),
database CPU per event (PostgreSQL: its backends serving this process), and events/s for one
uploader in a row. Every event must be stored exactly once (checked at the end).

Targets (the fleet's, on a 2-core machine: >= 20,000 events/s in batches of 500 and >= 8,000/s in
batches of 50, PostgreSQL, with the load generator and the database on the same two cores): the
server may spend half a core on them, so at most 25 us of server CPU per event in batches of 500
and 62 us in batches of 50. End to end over sockets: `python -m bench.fleet` (the fleet simulator).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import resource
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.report import Target, targets_block

SUMMARY = "event ingest in process: server CPU per event, batches of 50 and 500 (SQLite, PostgreSQL)"
BATCH_SIZES = (50, 500)
CPU_BUDGET_US = {500: 25.0, 50: 62.0}
RULES = [(f"rule-{i:02d}", ("p2p", "remote-access", "crypto-mining", "vpn")[i % 4]) for i in range(20)]
ACTIONS = ("killed", "reported", "suspended", "denied")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ingest")
    group.add_argument(
        "--ingest-events",
        type=int,
        default=50_000,
        help="events uploaded per database and batch size (50000)",
    )
    group.add_argument(
        "--ingest-pg",
        help="PostgreSQL URL to create a database on (default: $ENDPOINT_TEST_PG_URL; 'none' skips)",
    )


@dataclass(frozen=True)
class Result:
    label: str
    events: int
    server_us: float  # server CPU per event
    db_us: float | None  # database CPU per event (PostgreSQL backends), None on SQLite
    rate: float  # events/s, one uploader

    def line(self) -> str:
        db = f"{self.db_us:6.1f} us" if self.db_us is not None else "     -   "
        return (
            f"  {self.label:<28} server {self.server_us:6.1f} us/event   database {db}/event"
            f"   {self.rate:9,.0f} events/s (one uploader)"
        )


def _violation(rnd: random.Random, when: datetime, hostname: str) -> str:
    from endpoint_contract.events import Violation

    rule, category = rnd.choice(RULES)
    action = rnd.choice(ACTIONS)
    pid = rnd.randrange(1000, 60000)
    return Violation.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "detected_at": when,
            "first_seen": when - timedelta(seconds=rnd.randrange(1, 30)),
            "rule_id": rule,
            "category": category,
            "severity": "high",
            "action": action,
            "pid": pid,
            "process_name": "qbittorrent",
            "exe": "/opt/qbittorrent/bin/qbittorrent",
            "sha256": "ab" * 32,
            "cmdline": f"/opt/qbittorrent/bin/qbittorrent --profile=/home/alice/.qbt-{pid}",
            "ppid": 1812,
            "parent_name": "bash",
            "username": "alice",
            "evidence": [{"attribute": "name", "pattern": "qbittorrent*", "value": "qbittorrent"}],
            "reason": f"process name 'qbittorrent' matched 'qbittorrent*' (rule {rule})",
            "policy_version": 7,
            "hostname": hostname,
            "os": "Debian GNU/Linux 13 (trixie)",
        }
    ).to_json_text()


def _agent_event(when: datetime) -> str:
    from endpoint_contract.events import AgentEvent

    return AgentEvent.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "detected_at": when,
            "type": "events_dropped",
            "detail": {"queue": "full"},
            "count": 3,
        }
    ).to_json_text()


class _Asgi:
    """POSTs to the application through ASGI calls on one event loop (no socket, no client).

    The application's lifespan runs as under uvicorn: its cache watcher is what lets node keys be
    answered from memory (without it every upload would look its key up in the database).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._lifespan = app.router.lifespan_context(app)
        self.loop.run_until_complete(self._lifespan.__aenter__())

    def post_all(self, path: str, uploads: list[tuple[str, bytes]]) -> list[tuple[int, bytes]]:
        """POST each (token, body) in turn, inside one task: as under uvicorn, the worker threads
        of sync routes live as long as the loop's main task (one task per upload would start a
        thread per upload)."""

        async def run() -> list[tuple[int, bytes]]:
            return [await self._post(path, body, token) for token, body in uploads]

        return self.loop.run_until_complete(run())

    async def _post(self, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"authorization", f"Bearer {token}".encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self._lifespan.__aexit__(None, None, None))
        finally:
            self.loop.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _backend_cpu(pids: set[int]) -> float:
    """CPU seconds the PostgreSQL backends `pids` used so far (from /proc; same machine)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


@contextmanager
def _server_logging(path: Path) -> Iterator[None]:
    """The server's log as `serve --log-format json` writes it (INFO), to a file."""
    from endpoint_agent.logfmt import JsonLineFormatter

    handler = logging.FileHandler(path)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        handler.close()


def _run_one(kind: str, url: str | None, batch: int, total: int) -> Result:
    import sqlalchemy as sa
    from sqlalchemy import event

    from endpoint_admin.keygen import write_keypair
    from endpoint_contract.envelope import load_public_key
    from endpoint_contract.events import batch_body
    from server_stub.app import create_app
    from server_stub.auth import hash_node_key, new_node_key
    from server_stub.config import ServerConfig
    from server_stub.store import Store
    from server_stub.store.tables import events

    with TemporaryDirectory(prefix="bench-ingest-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        if kind == "sqlite":
            db = f"sqlite:///{tmp / 'ingest.db'}"
        else:
            from tests.support.server import fresh_pg_database

            db = stack.enter_context(fresh_pg_database(url or ""))
        store = Store.open(db)
        stack.callback(store.close)
        stack.enter_context(_server_logging(tmp / "server.log"))
        backends: set[int] = set()
        if kind == "postgresql":

            @event.listens_for(store.engine, "connect")
            def _backend(dbapi_conn: Any, _record: Any) -> None:
                with dbapi_conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    backends.add(int(cur.fetchone()[0]))

            store.engine.dispose()  # connections opened by migrations: reopened, and seen
        now = datetime.now(UTC)
        config = ServerConfig(
            data_dir=tmp,
            public_keys=(load_public_key(write_keypair(tmp / "keys").public_key),),
            admin_token="a" * 32,
            enroll_secret="e" * 32,
            rate_limit=1e9,
            rate_burst=1_000_000_000,
        )
        app = create_app(config, store=store)
        client = _Asgi(app)
        stack.callback(client.close)
        rnd = random.Random(17)
        hosts = []
        for i in range(20):
            key = new_node_key()
            name = f"bench-ws-{i:03d}"
            store.hosts.enroll(machine_id=f"m-{i}", hostname=name, node_key_hash=hash_node_key(key), now=now)
            hosts.append((key, name))
        bodies: list[tuple[str, bytes]] = []
        made = 0
        while made < total:
            key, name = hosts[len(bodies) % len(hosts)]
            texts = [
                _agent_event(now) if rnd.random() < 0.02 else _violation(rnd, now, name) for _ in range(batch)
            ]
            made += batch
            bodies.append((key, batch_body(texts)))
            if len(bodies) % 10 == 0:  # a retry: acknowledged again, stored once
                bodies.append(bodies[-1])
        # Warm up (imports, first connections, caches) on a throwaway host.
        warm_key = new_node_key()
        store.hosts.enroll(
            machine_id="m-warm", hostname="warm", node_key_hash=hash_node_key(warm_key), now=now
        )
        warm = [
            (warm_key, batch_body([_violation(rnd, now, "warm") for _ in range(batch)])) for _ in range(3)
        ]
        for status, answer in client.post_all("/api/v1/events", warm):
            if status != 200:
                raise RuntimeError(f"ingest: warm-up upload answered {status}: {answer[:200]!r}")
        with store.engine.connect() as conn:
            before = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
        cpu0, db0, wall0 = _cpu_seconds(), _backend_cpu(backends), time.perf_counter()
        answers = client.post_all("/api/v1/events", bodies)
        wall = time.perf_counter() - wall0
        cpu, db_cpu = _cpu_seconds() - cpu0, _backend_cpu(backends) - db0
        for status, answer in answers:
            if status != 200:
                raise RuntimeError(f"ingest: upload answered {status}: {answer[:200]!r}")
        uploaded = sum(body.count(b'"event_id"') for _, body in bodies)
        with store.engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() - before
        if stored != made:
            raise RuntimeError(
                f"ingest: {made} distinct events uploaded, {stored} stored (exactly once broken)"
            )
        return Result(
            label=f"{kind}, batches of {batch}",
            events=uploaded,
            server_us=cpu / uploaded * 1e6,
            db_us=db_cpu / uploaded * 1e6 if kind == "postgresql" else None,
            rate=uploaded / wall,
        )


def _split_line(kind: str, by_size: dict[int, Result]) -> str:
    """Per upload and per event, from the two batch sizes (cost = fixed / batch + per event)."""
    (small, a), (large, b) = sorted(by_size.items())

    def split(x: float, y: float) -> tuple[float, float]:
        fixed = (x - y) / (1 / small - 1 / large)
        return fixed, y - fixed / large

    server = split(a.server_us, b.server_us)
    text = f"  {kind}: server {server[0] / 1e3:.1f} ms per upload + {server[1]:.1f} us per event"
    if a.db_us is not None and b.db_us is not None:
        db = split(a.db_us, b.db_us)
        text += f"; database {db[0] / 1e3:.1f} ms per upload + {db[1]:.1f} us per event"
    return text


def run(args: argparse.Namespace) -> list[Target]:
    pg = args.ingest_pg or os.environ.get("ENDPOINT_TEST_PG_URL")
    kinds = [("sqlite", None)] + ([("postgresql", pg)] if pg and pg != "none" else [])
    if len(kinds) == 1:
        print("  PostgreSQL skipped: set ENDPOINT_TEST_PG_URL or --ingest-pg")
    print(f"  on {os.cpu_count()} cores shared with everything else running; one uploader, in process")
    results = []
    for kind, url in kinds:
        by_size = {}
        for batch in BATCH_SIZES:
            result = _run_one(kind, url, batch, args.ingest_events)
            print(result.line(), flush=True)
            results.append(result)
            by_size[batch] = result
        print(_split_line(kind, by_size), flush=True)
    targets = [
        Target(
            f"{r.label}: server us/event / {CPU_BUDGET_US[int(r.label.rsplit(' ', 1)[1])]:g}",
            r.server_us / CPU_BUDGET_US[int(r.label.rsplit(" ", 1)[1])],
            1.0,
        )
        for r in results
    ]
    print(targets_block(targets))
    return targets
