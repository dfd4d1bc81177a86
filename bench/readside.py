"""The read side at fleet size: filtered /violations at 1 M rows, a /hosts page at 100,000 hosts.

Fills a database with bench/bulkfill.py (1 M violations over 30 days from 100,000 hosts, ids in
the order the events were detected, as on a real server), then asks the real application
in-process (ASGI, reader token, JSON as clients get it) for one page of each filter of
`GET /api/v1/violations` -- by host id and by hostname, rule (frequent and rare), category,
action, severity, triage, time (last day, a week, a day a month back), a rule in the last day, the
next page by cursor -- and for `GET /api/v1/hosts` pages (first, later, stale, mode, policy
version, name prefix). Each query runs REPEAT times with varying values (other hosts, rules,
cursors); the target is each query's p95 against 50 ms (value = p95 / 50 ms). SQLite, and
PostgreSQL when ENDPOINT_TEST_PG_URL (or --readside-pg) names a server (a throwaway database).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.bulkfill import ACTIONS, RULES, Filled, fill
from bench.report import Target, targets_block
from bench.timing import fmt_seconds

SUMMARY = "filtered /violations at 1 M violations and a /hosts page at 100,000 hosts (p95 <= 50 ms)"
BUDGET_S = 0.050
TOKEN = "r" * 32
# /summary lists every host with a violation (tens of thousands here): printed, no 50 ms target.
UNTARGETED = "(shown, no target)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("readside")
    for name, default, what in (
        ("violations", 1_000_000, "violations to store"),
        ("hosts", 100_000, "hosts to enroll"),
        ("repeat", 40, "timed requests per query"),
    ):
        g.add_argument(f"--readside-{name}", type=int, default=default, help=f"{what} ({default:,})")
    g.add_argument("--readside-pg", help="PostgreSQL URL (default: $ENDPOINT_TEST_PG_URL); 'none' skips it")
    g.add_argument("--readside-only", choices=["sqlite", "postgresql"], help="one database only")
    g.add_argument(
        "--readside-reuse",
        metavar="URL",
        help="measure a database bench.bulkfill filled before (migrated first; kept) instead of filling one",
    )


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _queries(
    host_ids: list[str], hostnames: list[str], now: datetime
) -> list[tuple[str, Callable[[int], str]]]:
    """(label, i -> path): the i-th request of each query, values varying with i."""
    rnd = random.Random(11)
    noisy = len(host_ids) // 10 or 1
    some = [rnd.randrange(len(host_ids)) for _ in range(64)]  # any host: most send a few violations
    loud = [rnd.randrange(noisy) for _ in range(64)]  # the noisy tenth: hundreds each
    common = [r for r, _ in RULES[:3]]
    rare = [r for r, _ in RULES[-4:]]
    categories = sorted({c for _, c in RULES})
    actions = sorted(set(ACTIONS))
    month_ago = [now - timedelta(days=20 + (i % 8)) for i in range(64)]

    def v(query: str) -> str:
        return "/api/v1/violations?" + query

    return [
        ("healthz (no database: the floor of a request)", lambda i: "/api/v1/healthz"),
        ("violations by host id", lambda i: v(f"host={host_ids[some[i % 64]]}")),
        ("violations by host id (noisy host)", lambda i: v(f"host={host_ids[loud[i % 64]]}")),
        ("violations by hostname", lambda i: v(f"host={hostnames[loud[i % 64]]}")),
        ("violations by rule (frequent)", lambda i: v(f"rule_id={common[i % 3]}")),
        ("violations by rule (rare)", lambda i: v(f"rule_id={rare[i % 4]}")),
        ("violations by category", lambda i: v(f"category={categories[i % len(categories)]}")),
        ("violations by action", lambda i: v(f"action={actions[i % len(actions)]}")),
        ("violations by severity", lambda i: v(f"severity={('low', 'high', 'critical')[i % 3]}")),
        ("violations triaged (acknowledged)", lambda i: v("triage=acknowledged")),
        ("violations since 24h", lambda i: v("since=24h")),
        ("violations since 7d", lambda i: v("since=7d")),
        ("violations since 14d (the costliest start)", lambda i: v("since=14d")),
        (
            "violations one day, weeks ago",
            lambda i: v(
                f"since={_iso(month_ago[i % 64])}&until={_iso(month_ago[i % 64] + timedelta(days=1))}"
            ),
        ),
        ("violations by rule since 24h", lambda i: v(f"rule_id={common[i % 3]}&since=24h")),
        ("violations by host since 7d", lambda i: v(f"host={host_ids[loud[i % 64]]}&since=7d")),
        (
            "violations by category since 7d",
            lambda i: v(f"category={categories[i % len(categories)]}&since=7d"),
        ),
        ("violations by action since 7d", lambda i: v(f"action={actions[i % len(actions)]}&since=7d")),
        ("violations triaged (acknowledged) since 7d", lambda i: v("triage=acknowledged&since=7d")),
        ("violations open since 14d", lambda i: v("triage=open&since=14d")),
        (
            "violations by category and action since 14d",
            lambda i: v(
                f"category={categories[i % len(categories)]}&action={actions[i % len(actions)]}&since=14d"
            ),
        ),
        (
            "violations by severity, one day weeks ago",
            lambda i: v(
                f"severity={('low', 'high', 'critical')[i % 3]}&since={_iso(month_ago[i % 64])}"
                f"&until={_iso(month_ago[i % 64] + timedelta(days=1))}"
            ),
        ),
        ("hosts first page (default: 500)", lambda i: "/api/v1/hosts"),
        ("hosts page of 1000 (the most)", lambda i: "/api/v1/hosts?limit=1000"),
        ("hosts page of 100 (the console's)", lambda i: "/api/v1/hosts?limit=100"),
        ("hosts stale", lambda i: "/api/v1/hosts?stale=true"),
        ("hosts by mode", lambda i: "/api/v1/hosts?mode=monitor"),
        ("hosts by policy version", lambda i: "/api/v1/hosts?policy_version=1"),
        ("hosts by name prefix", lambda i: f"/api/v1/hosts?hostname_prefix={hostnames[some[i % 64]][:-2]}"),
        (f"summary since 7d {UNTARGETED}", lambda i: "/api/v1/summary?since=7d"),
        (f"summary, all time {UNTARGETED}", lambda i: "/api/v1/summary"),
    ]


@contextmanager
def _database(kind: str, pg: str | None, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'readside.db'}"
    else:
        from tests.support.server import fresh_pg_database

        assert pg is not None
        with fresh_pg_database(pg) as url:
            yield url


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]  # nearest rank


def _after(first: str, cursors: list[str]) -> Callable[[int], str]:
    """The next page's path: after the last cursor seen (the first page before any)."""
    return lambda _i: first + (f"&cursor={cursors[-1]}" if cursors else "")


def _sample(
    client: Any, path: Callable[[int], str], repeat: int, cursors: list[str] | None = None
) -> list[float]:
    """Seconds of each of `repeat` requests (after one unmeasured); `cursors` collects next_cursor."""
    import gc

    samples = []
    for i in range(-1, repeat):
        url = path(max(i, 0))
        gc.collect()
        start = time.perf_counter()
        answer = client.get(url)
        elapsed = time.perf_counter() - start
        if answer.status_code != 200:
            raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
        if cursors is not None and answer.json().get("next_cursor"):
            cursors.append(answer.json()["next_cursor"])
        if i >= 0:
            samples.append(elapsed)
    return samples


def _filled(store: Any) -> Filled:
    """What bench.bulkfill stored in a database it filled earlier: its hosts in fill order (the
    zero-padded names sort so; the first tenth are the noisy ones)."""
    import sqlalchemy as sa

    from server_stub.store.tables import events, hosts

    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(hosts.c.host_id, hosts.c.hostname).order_by(hosts.c.hostname)).all()
        violations = conn.execute(
            sa.select(sa.func.count()).select_from(events).where(events.c.kind == "violation")
        ).scalar_one()
    return Filled([r.host_id for r in rows], [r.hostname for r in rows], int(violations), 0, 0.0)


def _started(kind: str, limit_s: float = 120.0) -> None:
    """Wait for the server's start-up work (its node keys read into memory: seconds of CPU at
    100,000 hosts) so that what is measured is a running server's reads, not that."""
    import threading

    started = time.monotonic()
    while any(t.name == "key-cache-warm" for t in threading.enumerate()):
        if time.monotonic() - started > limit_s:
            raise RuntimeError(f"the server's key cache was still warming after {limit_s:.0f} s")
        time.sleep(0.1)
    print(f"  {kind}: server started (node keys read in {time.monotonic() - started:.1f} s more)", flush=True)


def _run_one(kind: str, pg: str | None, args: argparse.Namespace) -> dict[str, list[float]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from fastapi.testclient import TestClient

    from server_stub.app import create_app
    from server_stub.config import ServerConfig
    from server_stub.store import Store

    with TemporaryDirectory(prefix="bench-readside-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        now = datetime.now(UTC)
        if args.readside_reuse:
            started = time.monotonic()
            store = Store.open(args.readside_reuse)  # brings it to this schema: the migrations' cost
            stack.callback(store.close)
            filled = _filled(store)
            print(f"  {kind}: reusing {filled.violations:,} violations from {len(filled.host_ids):,} hosts "
                  f"(opened and migrated in {time.monotonic() - started:.1f} s)", flush=True)  # fmt: skip
        else:
            store = Store.open(stack.enter_context(_database(kind, pg, tmp)))
            stack.callback(store.close)
            size = {"hosts": args.readside_hosts, "violations": args.readside_violations}
            filled = fill(store.engine, now=now, **size)
            print(f"  {kind}: stored {filled.violations:,} violations and {filled.agent_events:,} agent "
                  f"events from {len(filled.host_ids):,} hosts in {filled.seconds:.0f} s",
                  flush=True)  # fmt: skip
        if kind == "postgresql" and not args.readside_reuse:  # what autovacuum does on a running server
            with store.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        config = ServerConfig(
            data_dir=tmp,
            public_keys=(Ed25519PrivateKey.generate().public_key(),),
            admin_token="a" * 32,
            reader_token=TOKEN,
            enroll_secret="e" * 32,
            rate_limit=1e6,
            rate_burst=1_000_000,
        )
        client = stack.enter_context(TestClient(create_app(config, store=store)))
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        _started(kind)
        out: dict[str, list[float]] = {}
        for label, path in _queries(filled.host_ids, filled.hostnames, now):
            out[f"{kind}: {label}"] = _sample(client, path, args.readside_repeat)
        # Paging on: each request continues where the previous one stopped.
        for label, first in (
            ("violations next pages (cursor)", "/api/v1/violations?limit=100"),
            ("violations by rule, next pages", f"/api/v1/violations?rule_id={RULES[-1][0]}&limit=100"),
            ("hosts next pages (cursor)", "/api/v1/hosts?"),
        ):
            cursors: list[str] = []
            out[f"{kind}: {label}"] = _sample(client, _after(first, cursors), args.readside_repeat, cursors)
        return out


def run(args: argparse.Namespace) -> list[Target]:
    pg = args.readside_pg or os.environ.get("ENDPOINT_TEST_PG_URL")
    kinds = [("sqlite", None)] + ([("postgresql", pg)] if pg and pg != "none" else [])
    if len(kinds) == 1:
        print("  PostgreSQL skipped: set ENDPOINT_TEST_PG_URL or --readside-pg")
    if args.readside_reuse:
        kinds = [("postgresql" if args.readside_reuse.startswith("postgres") else "sqlite", None)]
    kinds = [(kind, url) for kind, url in kinds if args.readside_only in (None, kind)]
    print("  (in-process ASGI through the real app; this 2-core machine is shared, so times are noisy)")
    targets: list[Target] = []
    for kind, url in kinds:
        measured = _run_one(kind, url, args)
        print(f"  {'':<56} {'p50':>9} {'p95':>9} {'max':>9}")
        for label, samples in measured.items():
            print(f"  {label:<56} {fmt_seconds(_p(samples, 0.5)):>9} {fmt_seconds(_p(samples, 0.95)):>9}"
                  f" {fmt_seconds(max(samples)):>9}", flush=True)  # fmt: skip
        targets += [
            Target(f"{label} p95 / 50 ms", _p(s, 0.95) / BUDGET_S, 1.0)
            for label, s in measured.items()
            if "healthz" not in label and UNTARGETED not in label  # the floor, and what has no target
        ]
    print(targets_block(targets))
    return targets
