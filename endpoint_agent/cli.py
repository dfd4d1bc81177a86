"""Command-line entry point: argument parsing and dispatch only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from endpoint_agent.cliversion import add_version
from endpoint_agent.display import printable
from endpoint_agent.errors import AgentError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _add_state_flags(p: argparse.ArgumentParser) -> None:
    """What `status` and `violations` need to find the agent's state (the same settings as `run`)."""
    p.add_argument("--config", help="config file (YAML or TOML); default: the system or user config file")
    p.add_argument("--state-dir", help="where the agent keeps its state (store, status, last good policy)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Options of `run` (each also ENDPOINT_AGENT_<NAME> and a config file key)."""
    _add_state_flags(p)
    p.add_argument("--server", help="policy/report server URL (https://; http:// only to this machine)")
    p.add_argument(
        "--enroll-secret",
        help="enrollment secret (visible to every local user in ps: prefer --enroll-secret-file or the env)",
    )
    p.add_argument("--enroll-secret-file", help="file holding the enrollment secret on one line")
    p.add_argument("--ca-bundle", help="PEM file of the CA(s) that sign the server's certificate")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="allow a plain http:// server that is not on this machine",
    )
    p.add_argument(
        "--public-key", action="append", dest="public_keys", help="trusted policy-signing key (repeatable)"
    )
    p.add_argument("--fleet-id", help="fleet this agent belongs to")
    p.add_argument(
        "--scan-interval",
        help="seconds between full scans, or auto (default: 30 with process exec events, 5 without)",
    )
    p.add_argument("--sync-interval", help="seconds between policy polls (default 60)")
    p.add_argument("--upload-interval", help="seconds between uploads/heartbeats (default 60)")
    p.add_argument("--policy", help="standalone mode: enforce this local policy file, no server")
    p.add_argument(
        "--exec-gate",
        choices=["auto", "on", "off"],
        help="judge programs before they run (Linux, root; default auto: where the kernel allows)",
    )
    p.add_argument(
        "--dns-filter",
        choices=["auto", "on", "off"],
        help="local DNS filter for domain rules (default auto: on while the policy has domain rules)",
    )
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")


def _add_remaining_settings(p: argparse.ArgumentParser) -> None:
    """Every other setting is a flag too (`--block-action`, `--break-glass-file`, ...), generated from
    the settings model so that a new setting needs no second definition here; its value is checked by
    the model, with the flag named in the error."""
    from endpoint_agent.settings import AgentSettings

    # Flags declared above (or by another helper) keep their own help.
    taken = set(p._option_string_actions) | {action.dest for action in p._actions}
    for name, field in AgentSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if flag in taken or name in taken or name in _INTERNAL_SETTINGS:
            continue
        help_text = f"{field.description or 'setting ' + name} (default: {_shown_default(field)})"
        if field.annotation is bool:
            p.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif name in _LIST_SETTINGS:
            p.add_argument(flag, dest=name, action="append", help=help_text + "; repeatable")
        else:
            p.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)


# Settings for tests and benchmarks only: config file or env, never advertised as a flag.
_INTERNAL_SETTINGS = frozenset({"enforce_scope_pid"})
_LIST_SETTINGS = frozenset({"protected_extra", "dns_upstreams"})


def _shown_default(field: object) -> str:
    default = getattr(field, "default", None)
    if getattr(field, "default_factory", None) is not None:
        return "platform dependent"
    return "auto" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="endpoint-agent", description="Endpoint usage policy agent.")
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
    _add_run_flags(run)
    _add_remaining_settings(run)

    status = sub.add_parser(
        "status",
        help="what the local agent is doing (exit 0 running, 3 not running, 2 error)",
        description="What the local agent is doing. Exit 0: running; 3: not running; 2: error.",
    )
    _add_state_flags(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    violations = sub.add_parser("violations", help="violations recorded on this machine")
    _add_state_flags(violations)
    violations.add_argument("--json", action="store_true", help="one JSON object per violation per line")
    restore = sub.add_parser(
        "restore-network",
        help="undo the DNS filter: resolver configuration back, nftables table deleted (stop, uninstall)",
    )
    _add_state_flags(restore)
    inst = sub.add_parser(
        "install", help="put the service in place: systemd unit (launchd plist), config, policy, state dir"
    )
    inst.add_argument("--root", default="/", help="install under this directory instead of / (staging)")
    inst.add_argument("--start", action="store_true", help="then enable and start the service")
    uninst = sub.add_parser("uninstall", help="undo install (an edited config is kept unless --purge)")
    uninst.add_argument("--root", default="/", help="the directory install used")
    uninst.add_argument("--purge", action="store_true", help="also remove the config and the state dir")
    add_version(parser, "endpoint-agent")
    return parser


# argparse's own keys, which are not settings.
_NOT_SETTINGS = frozenset({"command", "json"})
_INSTALL_COMMANDS = frozenset({"install", "uninstall"})


def _settings_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "scan":
        from endpoint_agent.scan import run_scan_command

        return run_scan_command(
            args.policy, as_json=args.json, enforce=args.enforce, public_keys=args.public_keys
        )
    if args.command == "check-policy":
        from endpoint_agent.scan import check_policy_command

        return check_policy_command(args.file, public_keys=args.public_keys)
    if args.command in _INSTALL_COMMANDS:
        from pathlib import Path

        from endpoint_agent.install import install, uninstall

        if args.command == "install":
            return install(Path(args.root), start=args.start)
        return uninstall(Path(args.root), purge=args.purge)

    from endpoint_agent.settings import load_settings

    if getattr(args, "enroll_secret", None):
        print(
            "endpoint-agent: warning: --enroll-secret is visible to every local user (ps); "
            "use --enroll-secret-file FILE or ENDPOINT_AGENT_ENROLL_SECRET",
            file=sys.stderr,
        )
    settings = load_settings(_settings_overrides(args))
    if args.command == "run":
        from endpoint_agent.daemon import run_service

        return run_service(settings)
    if args.command == "restore-network":  # the DNS filter's resolver change and nftables table
        from endpoint_agent.dns.restore import restore_network

        return restore_network(settings)
    if args.command == "status":
        from endpoint_agent.status import show_status

        return show_status(settings, as_json=args.json)
    from endpoint_agent.report.listing import show_violations

    return show_violations(settings, as_json=args.json)


def _one_line_warnings() -> None:
    """Warnings of the one-shot commands (scan --enforce) as escaped lines; `run` sets its own logging."""
    from endpoint_agent.logfmt import TextLineFormatter

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(TextLineFormatter("endpoint-agent: %(levelname)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        return _dispatch(args)
    except AgentError as exc:
        print(f"endpoint-agent: error: {printable(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `endpoint-agent violations | head` must not end in a traceback.
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # last resort: one line, never a traceback, for a user-facing tool
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(f"endpoint-agent: internal error: {type(exc).__name__}: {printable(exc)}", file=sys.stderr)
        return EXIT_ERROR
