"""`endpoint-admin`: key generation, policy signing and publishing, fleet reports.

Argument parsing and dispatch only; the work is in keygen, client and output.
Exit codes: 0 success, 1 server unreachable or failing (or verification failed), 2 bad input
or a request the server refused (4xx).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import NoReturn, TextIO

from endpoint_admin.client import PAGE_LIMIT, AdminClient
from endpoint_admin.durations import parse_duration
from endpoint_admin.errors import AdminError, AdminInputError
from endpoint_admin.keygen import write_keypair
from endpoint_admin.output import FORMATS, write_hosts, write_policies, write_table, write_violations
from endpoint_agent.cliversion import add_version
from endpoint_agent.errors import AgentError, PolicySignatureError
from endpoint_agent.policy import Policy, load_policy_file
from endpoint_agent.settings import read_secret_file
from endpoint_contract.envelope import (
    load_private_key,
    load_public_key,
    sign_policy,
    verify_envelope,
)
from endpoint_contract.vocabulary import Outcome, Severity

TOKEN_ENV = "ENDPOINT_ADMIN_TOKEN"
ACTIONS = tuple(o.value for o in Outcome)
SEVERITIES = tuple(s.value for s in Severity)
DEFAULT_FLEET = "default"
PROG = "endpoint-admin"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid percent {text!r}: expected an integer 0-100") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"invalid percent {value}: expected 0-100")
    return value


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"invalid page size {text!r}: expected 1-1000")
    return int(text)


def _action(text: str) -> str:
    """A violation's `action`: one of the fixed values (a typo is an error, not an empty listing)."""
    if text not in ACTIONS:
        raise argparse.ArgumentTypeError(f"invalid action {text!r}: expected one of {', '.join(ACTIONS)}")
    return text


def _severity(text: str) -> str:
    if text not in SEVERITIES:
        raise argparse.ArgumentTypeError(
            f"invalid severity {text!r}: expected one of {', '.join(SEVERITIES)}"
        )
    return text


def _event_type(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", text):
        raise argparse.ArgumentTypeError(
            f"invalid type {text!r}: expected an agent event type such as circuit_open, policy_unsafe"
        )
    return text


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _uses(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected 1 to 100000")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Sign and publish endpoint policies; read fleet reports.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("keygen", help="create an Ed25519 policy-signing key pair")
    p.add_argument("--out", required=True, type=Path, help="directory for policy-signing.key/.pub")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")

    def signing_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("policy", type=Path, metavar="POLICY.yaml")
        p.add_argument("--key", required=True, type=Path, action="append", help="private key (repeatable)")
        p.add_argument("--fleet-id", default=DEFAULT_FLEET, help=f"fleet the policy is for ({DEFAULT_FLEET})")
        p.add_argument("--expires-in", type=_duration, help="validity, e.g. 30d (default: never expires)")

    p = sub.add_parser("sign", help="sign a policy file into an envelope")
    signing_flags(p)
    p.add_argument("--out", type=Path, help="write the envelope here (default: stdout)")

    p = sub.add_parser("verify", help="verify an envelope against trusted public keys")
    p.add_argument("envelope", type=Path, metavar="ENVELOPE")
    p.add_argument("--public-key", required=True, type=Path, action="append", help="trusted key (repeatable)")

    def server_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server",
            required=True,
            help="server URL, e.g. https://policy.example.com (with or without /api/v1)",
        )
        p.add_argument(
            "--token", help=f"API token (default: ${TOKEN_ENV}); visible in ps, prefer --token-file"
        )
        p.add_argument("--token-file", type=Path, help="file holding the API token on one line")
        p.add_argument(
            "--ca-bundle", type=Path, help="PEM file of the CA(s) that sign the server's certificate"
        )

    p = sub.add_parser("publish", help="sign a policy and publish it to the server")
    signing_flags(p)
    server_flags(p)
    p.add_argument("--rollout", type=_percent, default=100, help="percent of hosts that get it (100)")

    p = sub.add_parser("rollout", help="change the rollout percent of the newest policy")
    server_flags(p)
    p.add_argument("--percent", required=True, type=_percent)

    p = sub.add_parser("rollback", help="make the previous policy version current for every host")
    server_flags(p)

    p = sub.add_parser("violations", help="list violations (every page)")
    server_flags(p)
    p.add_argument("--since", help="ISO 8601 time or relative like 24h, 7d")
    p.add_argument("--until", help="ISO 8601 time or relative like 1h")
    p.add_argument("--host", help="host id or hostname")
    p.add_argument("--rule-id")
    p.add_argument("--category")
    p.add_argument("--action", type=_action, help=f"one of {', '.join(ACTIONS)}")
    p.add_argument("--severity", type=_severity, help=f"one of {', '.join(SEVERITIES)}")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument(
        "--page-size", type=_page_size, default=PAGE_LIMIT, help=f"items per request ({PAGE_LIMIT})"
    )

    p = sub.add_parser(
        "agent-events", help="list agent events: circuit_open, policy_unsafe, events_dropped..."
    )
    server_flags(p)
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--host")
    p.add_argument("--type", type=_event_type, help="circuit_open, policy_unsafe, events_dropped, ...")
    p.add_argument(
        "--page-size", type=_page_size, default=PAGE_LIMIT, help=f"items per request ({PAGE_LIMIT})"
    )

    p = sub.add_parser("hosts", help="list enrolled hosts (stale ones marked); `hosts reset HOST`")
    server_flags(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument(
        "action", nargs="?", choices=["reset"], help="reset: let HOST enroll once more (its node key stops)"
    )
    p.add_argument("host", nargs="?", help="host id or name (for reset)")
    p.add_argument("--stale", action="store_true", help="only hosts silent longer than --stale-after")
    p.add_argument("--mode", help="only hosts in this mode (enforce, monitor)")
    p.add_argument("--policy-version", type=int, help="only hosts that run this policy version")
    p.add_argument("--prefix", help="only hosts whose name starts with this")
    p.add_argument(
        "--page-size", type=_page_size, default=PAGE_LIMIT, help=f"hosts per request ({PAGE_LIMIT})"
    )

    p = sub.add_parser("enroll-token", help="create a per-rollout enrollment token (admin token)")
    server_flags(p)
    p.add_argument("action", choices=["create"])
    p.add_argument("--expires", type=_duration, default=timedelta(days=7), help="lifetime, e.g. 7d (7d)")
    p.add_argument("--uses", type=_uses, default=1, help="how many hosts may enroll with it (1)")

    p = sub.add_parser("policies", help="list published policy versions, newest first")
    server_flags(p)
    p.add_argument("--format", choices=FORMATS, default="table")

    p = sub.add_parser("summary", help="violation counts by rule, category, action and host")
    server_flags(p)
    p.add_argument("--since", help="ISO 8601 time or relative like 24h, 7d")
    p.add_argument("--json", action="store_true", help="print the server's JSON")

    p = sub.add_parser("report", help="the compliance report of a period (printable HTML, or CSV)")
    server_flags(p)
    p.add_argument("--since", default="30d", help="start: ISO 8601 time or relative like 30d (30d)")
    p.add_argument("--until", help="end: ISO 8601 time or relative (now)")
    p.add_argument("--format", choices=("html", "csv"), default="html")
    p.add_argument("--out", type=Path, help="write the report here (default: stdout)")
    add_version(parser, PROG)
    return parser


# --- commands ---------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    pair = write_keypair(args.out, force=args.force)
    out.write(f"private key: {pair.private_key} (mode 0600, keep it secret)\n")
    out.write(f"public key:  {pair.public_key}\nkey id:      {pair.key_id}\n")
    return 0


def _sign(args: argparse.Namespace) -> bytes:
    policy = load_policy_file(args.policy)
    keys = [load_private_key(path) for path in args.key]
    try:
        return sign_policy(policy, keys, args.fleet_id, expires_in=args.expires_in)
    except ValueError as exc:
        raise AdminInputError(f"{args.policy}: cannot sign: {exc}") from exc


def cmd_sign(args: argparse.Namespace, out: TextIO) -> int:
    envelope = _sign(args)
    if args.out is None:
        out.write(envelope.decode("utf-8") + "\n")
        return 0
    try:
        args.out.write_bytes(envelope + b"\n")
    except OSError as exc:
        raise AdminInputError(f"{args.out}: cannot write envelope: {exc.strerror or exc}") from exc
    print(f"signed {args.policy} -> {args.out}", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    keys = [load_public_key(path) for path in args.public_key]
    try:
        data = args.envelope.read_bytes()
    except OSError as exc:
        raise AdminInputError(f"{args.envelope}: cannot read envelope: {exc.strerror or exc}") from exc
    try:
        verified = verify_envelope(data, keys, Policy)
    except PolicySignatureError as exc:
        print(f"{PROG}: {args.envelope}: verification FAILED: {exc}", file=sys.stderr)
        return 1
    signed = verified.signed
    expires = signed.expires_at.isoformat() if signed.expires_at else "never"
    out.write(
        f"OK: policy {signed.policy.name!r} version {signed.version}, fleet {signed.fleet_id!r}, "
        f"signed by key {verified.key_id}, issued {signed.issued_at.isoformat()}, expires {expires}\n"
    )
    return 0


def _token(args: argparse.Namespace) -> str:
    if args.token and args.token_file:
        raise AdminInputError("--token and --token-file: give the token one way only")
    if args.token_file is not None:
        try:
            return read_secret_file(args.token_file)
        except ValueError as exc:
            raise AdminInputError(f"--token-file: {exc}") from exc
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise AdminInputError(f"no API token: pass --token-file FILE or set {TOKEN_ENV}")
    return str(token)


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.server, _token(args), ca_bundle=args.ca_bundle)


def cmd_publish(args: argparse.Namespace, out: TextIO) -> int:
    envelope = json.loads(_sign(args))
    with _client(args) as client:
        result = client.publish(envelope, args.rollout)
    out.write(
        f"published version {result.get('version')} to {result.get('rollout_percent')}% of hosts "
        f"(previous version: {result.get('previous_version')})\n"
    )
    return 0


def cmd_rollout(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        result = client.rollout(args.percent)
    out.write(
        f"version {result.get('version')} now rolled out to {result.get('rollout_percent')}% of hosts\n"
    )
    return 0


def cmd_rollback(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        result = client.rollback()
    out.write(
        f"rolled back version {result.get('rolled_back_version')}; "
        f"version {result.get('version')} is current for every host\n"
    )
    return 0


def cmd_violations(args: argparse.Namespace, out: TextIO) -> int:
    params = {
        "since": args.since,
        "until": args.until,
        "host": args.host,
        "rule_id": args.rule_id,
        "category": args.category,
        "action": args.action,
        "severity": args.severity,
        "limit": str(args.page_size),
    }
    with _client(args) as client:
        write_violations(client.iter_pages("/violations", params), args.format, out)
    return 0


def cmd_agent_events(args: argparse.Namespace, out: TextIO) -> int:
    params = {
        "since": args.since,
        "until": args.until,
        "host": args.host,
        "type": args.type,
        "limit": str(args.page_size),
    }
    with _client(args) as client:
        for item in client.iter_pages("/agent-events", params):
            out.write(json.dumps(item, sort_keys=True) + "\n")
    return 0


def cmd_hosts(args: argparse.Namespace, out: TextIO) -> int:
    if args.action == "reset":
        if not args.host:
            raise AdminInputError("hosts reset: which host? (its id or name)")
        with _client(args) as client:
            result = client.reset_host(args.host)
        out.write(
            f"host {result.get('hostname')} ({result.get('host_id')}) may enroll once more; "
            "its node key no longer works\n"
        )
        return 0
    if args.host:
        raise AdminInputError(f"hosts: unexpected argument {args.host!r} (did you mean `hosts reset HOST`?)")
    params = {
        "stale": "true" if args.stale else None,
        "mode": args.mode,
        "policy_version": None if args.policy_version is None else str(args.policy_version),
        "hostname_prefix": args.prefix,
        "limit": str(args.page_size),
    }
    with _client(args) as client:
        write_hosts(client.hosts(params), args.format, out)
    return 0


def cmd_enroll_token(args: argparse.Namespace, out: TextIO) -> int:
    seconds = int(args.expires.total_seconds())
    with _client(args) as client:
        result = client.create_enroll_token(seconds, args.uses)
    # The token itself on stdout alone (for a secret file); what it allows on stderr.
    out.write(f"{result.get('token')}\n")
    print(
        f"{PROG}: enroll token for {result.get('uses')} hosts, expires {result.get('expires_at')}",
        file=sys.stderr,
    )
    return 0


def cmd_policies(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        write_policies(client.policy_versions(), args.format, out)
    return 0


def cmd_summary(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        result = client.summary(args.since)
    if args.json:
        out.write(json.dumps(result, sort_keys=True, indent=2) + "\n")
        return 0
    since, until = result.get("since") or "the beginning", result.get("until") or "now"
    out.write(f"violations from {since} to {until}: {result.get('total', 0)}\n")
    for title, key, label in (
        ("BY RULE", "by_rule", "rule_id"),
        ("BY CATEGORY", "by_category", "category"),
        ("BY ACTION", "by_action", "action"),
        ("BY HOST", "by_host", "hostname"),
    ):
        out.write(f"\n{title}\n")
        rows = [[str(r.get(label)), str(r.get("count"))] for r in result.get(key) or []]
        write_table([label.upper(), "COUNT"], rows, out)
    return 0


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        text = client.report(args.since, args.until, args.format)
    if args.out is None:
        out.write(text)
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise AdminInputError(f"--out: cannot write {args.out}: {exc.strerror or exc}") from exc
    print(f"report written to {args.out}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "keygen": cmd_keygen,
    "sign": cmd_sign,
    "verify": cmd_verify,
    "publish": cmd_publish,
    "rollout": cmd_rollout,
    "rollback": cmd_rollback,
    "violations": cmd_violations,
    "agent-events": cmd_agent_events,
    "hosts": cmd_hosts,
    "enroll-token": cmd_enroll_token,
    "policies": cmd_policies,
    "summary": cmd_summary,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, sys.stdout)
    except AdminError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except AgentError as exc:  # policy or key files that cannot be used
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head` closed the pipe: not an error worth a traceback
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
