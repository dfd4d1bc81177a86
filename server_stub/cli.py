"""`endpoint-server serve`: argument parsing and start-up only.

Secrets come from the environment (ENDPOINT_SERVER_ADMIN_TOKEN, ENDPOINT_SERVER_READER_TOKEN,
ENDPOINT_SERVER_ENROLL_SECRET) or from flags of the same names (--admin-token, --reader-token,
--enroll-secret); flags win. Prefer the environment: flags are visible to every local user in ps.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from endpoint_agent.errors import AgentError, SettingsError
from endpoint_agent.sync.envelope import load_public_key
from server_stub.config import ADMIN_TOKEN_ENV, ENROLL_SECRET_ENV, READER_TOKEN_ENV, ServerConfig

PROG = "endpoint-server"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Reference policy and report server for endpoint agents.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    p.add_argument("--data-dir", type=Path, help="state directory (SQLite database lives here)")
    p.add_argument("--db", help="database URL instead of SQLite, e.g. postgresql://user:pw@host/db")
    p.add_argument(
        "--public-key", type=Path, action="append", default=[], help="trusted policy-signing key (repeatable)"
    )
    p.add_argument("--admin-token", help=f"admin API token (default: ${ADMIN_TOKEN_ENV})")
    p.add_argument("--reader-token", help=f"read-only API token (default: ${READER_TOKEN_ENV})")
    p.add_argument(
        "--enroll-secret", help=f"shared secret agents enroll with (default: ${ENROLL_SECRET_ENV})"
    )
    p.add_argument(
        "--stale-after", type=float, default=300.0, help="seconds of silence before a host is stale"
    )
    p.add_argument("--rate-limit", type=float, default=20.0, help="requests per second per credential (20)")
    p.add_argument("--rate-burst", type=int, default=100, help="burst size of the rate limit (100)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if args.data_dir is None and args.db is None:
        raise SettingsError("--data-dir: required (or give --db)")
    if not args.public_key:
        raise SettingsError("--public-key: at least one trusted policy-signing public key is required")
    admin_token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV)
    enroll_secret = args.enroll_secret or os.environ.get(ENROLL_SECRET_ENV)
    if not admin_token:
        raise SettingsError(f"--admin-token: required (or set {ADMIN_TOKEN_ENV})")
    if not enroll_secret:
        raise SettingsError(f"--enroll-secret: required (or set {ENROLL_SECRET_ENV})")
    return ServerConfig(
        data_dir=args.data_dir or Path("."),
        db_url=args.db,
        public_keys=tuple(load_public_key(path) for path in args.public_key),
        admin_token=admin_token,
        reader_token=args.reader_token or os.environ.get(READER_TOKEN_ENV) or None,
        enroll_secret=enroll_secret,
        stale_after=args.stale_after,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        # Imported here so that `--help` and flag errors do not pay for FastAPI.
        import uvicorn

        from server_stub.app import create_app

        app = create_app(config_from_args(args))
    except AgentError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        server_header=False,
        proxy_headers=False,  # per-address rate limits must not trust X-Forwarded-For
        date_header=True,
    )
    return 0
