"""`endpoint-server serve`: argument parsing and start-up only.

TLS: `--tls-cert FILE --tls-key FILE` (PEM) serve https directly; without them, serve plain http
on loopback only and put a TLS reverse proxy in front (packaging/README.md).

Secrets come from the environment (ENDPOINT_SERVER_ADMIN_TOKEN, ENDPOINT_SERVER_READER_TOKEN,
ENDPOINT_SERVER_ENROLL_SECRET) or from flags of the same names (--admin-token, --reader-token,
--enroll-secret); flags win. Prefer the environment: flags are visible to every local user in ps.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import ssl
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from endpoint_agent.cliversion import add_version
from endpoint_agent.errors import AgentError, SettingsError
from endpoint_agent.logfmt import JsonLineFormatter
from endpoint_agent.settings import is_loopback_host
from endpoint_contract.envelope import load_public_key
from server_stub import users_cli
from server_stub.config import (
    ADMIN_TOKEN_ENV,
    DEFAULT_THREADS,
    ENROLL_SECRET_ENV,
    IN_FLIGHT_PER_THREAD,
    READER_TOKEN_ENV,
    ServerConfig,
)
from server_stub.errors import ApiError
from server_stub.export.config import ExportConfig, load_export_config

PROG = "endpoint-server"


MAX_WORKERS = 64
# Set in each worker process: a 0600 file holding the argv the parent validated (server_stub/cli.py).
WORKER_ARGS_ENV = "ENDPOINT_SERVER_WORKER_ARGS"


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_WORKERS}, got {text!r}")
    return value


def _address_or_network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or network: {text!r}") from None


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
    p.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds to receive a request body, else 408 (30)"
    )
    p.add_argument(
        "--enroll-rate",
        type=float,
        default=3000.0,
        help="enrollments per second per enroll credential, half of it per address (3000)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help=f"server processes on this port, 1-{MAX_WORKERS} (1); they share the database and limits",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        type=_address_or_network,
        metavar="ADDRESS",
        help="a reverse proxy's address or network whose X-Forwarded-For names the client (repeatable)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"worker threads for database work; the database pool is sized to match ({DEFAULT_THREADS})",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        help=f"requests in progress at once; past it 503 + Retry-After ({IN_FLIGHT_PER_THREAD} x --threads)",
    )
    p.add_argument(
        "--write-behind",
        type=float,
        default=2.0,
        help="seconds between batched writes of hosts' last contact and heartbeats (2)",
    )
    p.add_argument(
        "--max-loop-lag",
        type=float,
        default=0.02,
        help="seconds the event loop may lag before new requests get 503 + Retry-After (0.02; 0: off)",
    )
    p.add_argument(
        "--no-access-log",
        action="store_true",
        help="no line per request at --log-level info (a large fleet's polls: thousands a second)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one object per line, with fields",
    )
    p.add_argument(
        "--config", type=Path, help="YAML config file: push export of violations (`export:`, see API.md)"
    )
    p.add_argument(
        "--retention-days",
        type=float,
        default=0.0,
        help="purge events detected longer ago, in small batches (default 0: keep forever)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) to serve https with")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    users_cli.add_parser(sub)
    add_version(parser, PROG)
    return parser


# Modules of the [server] extra: their absence is an installation choice, told in one line.
_SERVER_EXTRA = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "sqlalchemy",
        "psycopg",
        "prometheus_client",
        "jinja2",
        "argon2",
        "multipart",
    }
)
EXTRA_HINT = f"{PROG} needs the [server] extra: pip install 'endpoint-agent[server]'"


def _tls_files(args: argparse.Namespace) -> dict[str, str]:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key: give both or neither")
    if args.tls_cert is None:
        return {}
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if not path.is_file():
            raise SettingsError(f"{flag}: {path}: not found or not a regular file")
    try:  # a bad pair fails here, in one line, not in uvicorn's start-up traceback
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"--tls-cert/--tls-key: cannot load the certificate and key: {exc}") from exc
    return {"ssl_certfile": str(args.tls_cert), "ssl_keyfile": str(args.tls_key)}


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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
        body_timeout=args.body_timeout,
        enroll_rate=args.enroll_rate,
        threads=args.threads,
        max_in_flight=args.max_in_flight,
        write_behind=args.write_behind,
        max_loop_lag=args.max_loop_lag,
        export=load_export_config(args.config) if args.config else ExportConfig(),
        retention_days=args.retention_days,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "users":
        try:
            return users_cli.run(args, sys.stdout)
        except AgentError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        except ApiError as exc:  # an existing or unknown user name
            print(f"{PROG}: {exc.message}", file=sys.stderr)
            return 2
    _configure_logging(args.log_level, args.log_format)
    try:
        tls = _tls_files(args)
        # Imported here so that `--help` and flag errors do not pay for FastAPI.
        import uvicorn

        from server_stub.app import create_app, open_store
        from server_stub.listener import protocol_factory

        config = config_from_args(args)
        if args.workers > 1:
            # Migrate once, here, before any worker starts (each worker then finds the schema current).
            open_store(config).close()
            app: Any = "server_stub.cli:worker_app"
        else:
            app = create_app(config)
    except AgentError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_EXTRA:
            raise
        print(f"{EXTRA_HINT} (missing: {exc.name})", file=sys.stderr)
        return 2
    if not tls and not is_loopback_host(args.host):
        logging.getLogger(__name__).warning(
            "serving plain http on %s: agents refuse it unless given --insecure-http; "
            "use --tls-cert/--tls-key or a TLS reverse proxy",
            args.host,
        )
    with _worker_args(argv if argv is not None else sys.argv[1:], args.workers):
        uvicorn.run(
            app,
            factory=args.workers > 1,
            workers=args.workers if args.workers > 1 else None,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=None,  # keep the handler configured above (text or JSON lines)
            access_log=not args.no_access_log,
            server_header=False,
            # Per-address rate limits trust X-Forwarded-For only from the named proxies.
            proxy_headers=bool(args.trusted_proxy),
            forwarded_allow_ips=args.trusted_proxy or None,
            date_header=True,
            # uvicorn's own HTTP protocol, or a 503 at once while the event loop lags (listener.py)
            http=protocol_factory,  # type: ignore[arg-type]
            **tls,  # type: ignore[arg-type]
        )
    return 0


@contextlib.contextmanager
def _worker_args(argv: Sequence[str], workers: int) -> Iterator[None]:
    """For several workers: the validated argv in a 0600 file named by WORKER_ARGS_ENV (never on a
    command line: it may hold a secret given by flag); removed when the server stops."""
    if workers <= 1:
        yield
        return
    fd, path = tempfile.mkstemp(prefix="endpoint-server-", suffix=".args")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(list(argv), out)
        os.environ[WORKER_ARGS_ENV] = path
        yield
    finally:
        os.environ.pop(WORKER_ARGS_ENV, None)
        with contextlib.suppress(OSError):
            os.unlink(path)


def worker_app() -> Any:
    """The application in one worker process of `serve --workers N` (uvicorn's factory)."""
    from server_stub.app import create_app

    path = os.environ.get(WORKER_ARGS_ENV)
    if not path:
        raise SettingsError(f"{WORKER_ARGS_ENV} is not set: worker_app runs under `serve --workers N`")
    with open(path, encoding="utf-8") as src:
        args = build_parser().parse_args(json.load(src))
    _configure_logging(args.log_level, args.log_format)
    return create_app(config_from_args(args))
