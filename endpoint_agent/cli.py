"""Command-line entry point: argument parsing and dispatch only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from endpoint_agent import __version__
from endpoint_agent.errors import AgentError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    """Options of `run`, `status` and `violations` (each also ENDPOINT_AGENT_<NAME> and config file)."""
    p.add_argument("--config", help="config file (YAML or TOML)")
    p.add_argument("--state-dir", help="where the agent keeps its state (store, status, last good policy)")
    p.add_argument("--server", help="policy/report server URL")
    p.add_argument("--enroll-secret", help="enrollment secret for the server")
    p.add_argument(
        "--public-key", action="append", dest="public_keys", help="trusted policy-signing key (repeatable)"
    )
    p.add_argument("--fleet-id", help="fleet this agent belongs to")
    p.add_argument(
        "--scan-interval",
        type=float,
        help="seconds between full scans (default: 30 with process exec events, 5 without)",
    )
    p.add_argument("--sync-interval", type=float, help="seconds between policy polls (default 60)")
    p.add_argument("--upload-interval", type=float, help="seconds between uploads/heartbeats (default 60)")
    p.add_argument("--policy", help="standalone mode: enforce this local policy file, no server")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="endpoint-agent", description="Endpoint usage policy agent.")
    parser.add_argument("--version", action="version", version=f"endpoint-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    scan = sub.add_parser("scan", help="scan this machine once against a local policy file")
    scan.add_argument("--policy", required=True, help="policy file (YAML, or a signed envelope)")
    scan.add_argument("--json", action="store_true", help="one JSON object per finding per line (NDJSON)")
    scan.add_argument(
        "--enforce", action="store_true", help="stop processes that block rules match (default: report only)"
    )
    scan.add_argument(
        "--public-key",
        action="append",
        dest="public_keys",
        help="trusted signing key, to scan with a signed envelope (repeatable)",
    )

    check = sub.add_parser("check-policy", help="validate a policy file")
    check.add_argument("file", help="policy file (YAML, or a signed envelope)")
    check.add_argument("--public-key", action="append", dest="public_keys", help="trusted signing key")

    run = sub.add_parser("run", help="run the agent service")
    _add_settings_flags(run)

    status = sub.add_parser("status", help="what the local agent is doing")
    _add_settings_flags(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    violations = sub.add_parser("violations", help="violations recorded on this machine")
    _add_settings_flags(violations)
    violations.add_argument("--json", action="store_true", help="one JSON object per violation per line")
    return parser


_SETTINGS_KEYS = (
    "config",
    "state_dir",
    "server",
    "enroll_secret",
    "public_keys",
    "fleet_id",
    "scan_interval",
    "sync_interval",
    "upload_interval",
    "policy",
    "log_format",
    "log_level",
)


def _settings_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {k: getattr(args, k) for k in _SETTINGS_KEYS if getattr(args, k, None) is not None}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "scan":
        from endpoint_agent.scan import run_scan_command

        return run_scan_command(
            args.policy, as_json=args.json, enforce=args.enforce, public_keys=args.public_keys
        )
    if args.command == "check-policy":
        from endpoint_agent.scan import check_policy_command

        return check_policy_command(args.file, public_keys=args.public_keys)

    from endpoint_agent.settings import load_settings

    settings = load_settings(_settings_overrides(args))
    if args.command == "run":
        from endpoint_agent.daemon import run_service

        return run_service(settings)
    if args.command == "status":
        from endpoint_agent.status import show_status

        return show_status(settings, as_json=args.json)
    from endpoint_agent.report.listing import show_violations

    return show_violations(settings, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except AgentError as exc:
        print(f"endpoint-agent: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `endpoint-agent violations | head` must not end in a traceback.
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # last resort: one line, never a traceback, for a user-facing tool
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(f"endpoint-agent: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
