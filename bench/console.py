"""Console pages at fleet scale: 1 M stored violations from 10,000 hosts, SQLite and PostgreSQL.

Fills a database with bench/bulkfill.py (what uploads leave behind, compressed into 30 days;
a few minutes), then renders every console page in-process through the
real application (session cookie, templates, SQL aggregates) and times the server side. The
target is each page's median against the 300 ms budget (value = median / 300 ms).
PostgreSQL runs when ENDPOINT_TEST_PG_URL (or --console-pg) names a server; a throwaway database
is created and dropped.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.bulkfill import RULES, fill
from bench.report import Target, targets_block, timing_table
from bench.timing import Timing, measure

SUMMARY = "console pages (overview, lists, host, rule, report) at 1 M violations / 10,000 hosts"
BUDGET_S = 0.300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("console")
    g.add_argument(
        "--console-violations", type=int, default=1_000_000, help="violations to store (1,000,000)"
    )
    g.add_argument("--console-hosts", type=int, default=10_000, help="hosts to enroll (10,000)")
    g.add_argument("--console-repeat", type=int, default=5, help="timed renders per page (5)")
    g.add_argument("--console-pg", help="PostgreSQL URL (default: $ENDPOINT_TEST_PG_URL); 'none' skips it")
    g.add_argument("--console-no-sqlite", action="store_true", help="PostgreSQL only")


def _publish(store: Any, keys_dir: Path) -> Any:
    """Policy versions 1 and 2 signed with a fresh key; returns the public key."""
    from endpoint_admin.keygen import write_keypair
    from endpoint_agent.policy import parse_policy
    from endpoint_contract.envelope import load_private_key, load_public_key, sign_policy
    from server_stub.store import NewPolicy

    pair = write_keypair(keys_dir)
    rules = "\n".join(
        f"  - id: {r}\n    category: {c}\n    action: report\n    process: {{name: [{r}-proc]}}"
        for r, c in RULES
    )
    for version in (1, 2):
        policy = parse_policy(f"name: bench\nversion: {version}\nrules:\n{rules}\n", "<bench>")
        env = sign_policy(policy, [load_private_key(pair.private_key)], "default")
        store.policies.publish(
            NewPolicy(version, env.decode(), f'"{version}"', "k", "bench", "default", 100), datetime.now(UTC)
        )
    return load_public_key(pair.public_key)


def _pages(host_id: str) -> list[tuple[str, str]]:
    return [
        ("overview (30 days)", "/?since=30d"),
        ("violations list (30 days)", "/violations?since=30d"),
        ("violations filtered (rule, open)", "/violations?since=30d&rule_id=rule-03&triage=open"),
        ("host page", f"/hosts/{host_id}?since=30d"),
        ("hosts list", "/hosts"),
        ("rules (hits and unused)", "/rules?since=30d"),
        ("rule page", "/rules/rule-01?since=30d"),
        ("policies", "/policies"),
        ("compliance report", "/report?since=30d"),
        ("audit log", "/audit"),
        ("API summary (30 days)", "/api/v1/summary?since=30d"),
        ("API summary (rule, open)", "/api/v1/summary?since=30d&rule_id=rule-01&triage=open"),
        ("API report (30 days)", "/api/v1/report?since=30d"),
    ]


@contextmanager
def _database(kind: str, url: str | None, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    from tests.support.server import fresh_pg_database

    assert url is not None
    with fresh_pg_database(url) as db:
        yield db


def _run_one(kind: str, url: str | None, args: argparse.Namespace) -> list[Timing]:
    from fastapi.testclient import TestClient

    from server_stub.app import create_app
    from server_stub.config import ServerConfig
    from server_stub.console.passwords import hash_password
    from server_stub.store import Store

    with TemporaryDirectory(prefix="bench-console-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        db = stack.enter_context(_database(kind, url, tmp))
        store = Store.open(db)
        stack.callback(store.close)
        now = datetime.now(UTC)
        filled = fill(store.engine, hosts=args.console_hosts, violations=args.console_violations, now=now)
        print(f"  {kind}: stored {filled.violations:,} violations and {filled.agent_events:,} agent events "
              f"from {len(filled.host_ids):,} hosts in {filled.seconds:.0f} s", flush=True)  # fmt: skip
        public_key = _publish(store, tmp / "keys")
        store.users.add("bench", "admin", hash_password("bench password 123"), now)
        config = ServerConfig(
            data_dir=tmp,
            public_keys=(public_key,),
            admin_token="a" * 32,
            enroll_secret="e" * 32,
            rate_limit=1e6,
            rate_burst=1_000_000,
        )
        client = stack.enter_context(TestClient(create_app(config, store=store)))
        form = client.get("/signin").text
        token = form.split('name="csrf_token" value="')[1].split('"')[0]
        signed = client.post(
            "/signin", data={"csrf_token": token, "name": "bench", "password": "bench password 123"}
        )
        assert signed.status_code in (200, 303), signed.text

        def get(path: str) -> None:
            api = {"Authorization": f"Bearer {config.admin_token}"} if path.startswith("/api/") else None
            r = client.get(path, headers=api)
            if r.status_code != 200:
                raise RuntimeError(f"{path}: {r.status_code}")

        measured = [
            measure(f"{kind}: {label}", lambda p=path: get(p), repeat=args.console_repeat)  # type: ignore[misc]
            for label, path in _pages(filled.host_ids[0])
        ]
        print(timing_table(measured), flush=True)  # before the database is dropped, and the next filled
        return measured


def run(args: argparse.Namespace) -> list[Target]:
    pg = args.console_pg or os.environ.get("ENDPOINT_TEST_PG_URL")
    kinds: list[tuple[str, str | None]] = [] if args.console_no_sqlite else [("sqlite", None)]
    kinds += [("postgresql", pg)] if pg and pg != "none" else []
    if all(kind != "postgresql" for kind, _ in kinds):
        print("  PostgreSQL skipped: set ENDPOINT_TEST_PG_URL or --console-pg")
    timings: list[Timing] = []
    for kind, url in kinds:
        measured = _run_one(kind, url, args)
        timings += measured
    worst: dict[str, Timing] = {}
    for t in timings:
        kind = t.label.split(":")[0]
        if kind not in worst or t.median > worst[kind].median:
            worst[kind] = t
    targets = [
        Target(f"{kind} slowest page / 300 ms ({t.label.split(': ')[1]})", t.median / BUDGET_S, 1.0)
        for kind, t in worst.items()
    ]
    print(targets_block(targets))
    return targets
