"""`endpoint-server users add|list|disable`: the console's named users, straight in the database.

Run on the server machine with the same --data-dir/--db as `serve`; every change is audited
(actor: the local account that ran the command).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from endpoint_agent.errors import SettingsError

if TYPE_CHECKING:
    from server_stub.store import Store

ROLES = ("reader", "analyst", "admin")
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("users", help="console users: add, list, disable")
    users = p.add_subparsers(dest="users_command", required=True, parser_class=type(p))

    def storage(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data-dir", type=Path, help="the server's state directory (SQLite lives here)")
        q.add_argument("--db", help="database URL instead of SQLite (as given to serve)")

    q = users.add_parser("add", help="add a user (password prompted, or read from --password-file)")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=ROLES)
    q.add_argument("--password-file", type=Path, help="file whose first line is the password")
    storage(q)
    q = users.add_parser("list", help="list users with role and state")
    storage(q)
    q = users.add_parser("disable", help="disable a user and end their sessions")
    q.add_argument("name")
    storage(q)


def _store(args: argparse.Namespace) -> Store:
    from server_stub.store import Store, sqlite_url

    if args.db:
        return Store.open(args.db)
    if args.data_dir is None:
        raise SettingsError("--data-dir: required (or give --db)")
    if not args.data_dir.is_dir():
        raise SettingsError(f"--data-dir: {args.data_dir} is not a directory")
    return Store.open(sqlite_url(args.data_dir))


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        try:
            text = args.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"--password-file: cannot read {args.password_file}: {exc}") from exc
        lines = text.splitlines()
        return lines[0] if lines else ""
    if not sys.stdin.isatty():
        raise SettingsError("no terminal to prompt for the password: use --password-file FILE")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise SettingsError("the passwords differ")
    return first


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def run(args: argparse.Namespace, out: TextIO) -> int:
    from server_stub.console.passwords import check_new_password, hash_password
    from server_stub.store import audit
    from server_stub.store.engine import utcnow

    if args.users_command in ("add", "disable") and (
        not args.name or len(args.name) > 64 or not set(args.name) <= NAME_CHARS
    ):
        raise SettingsError("NAME: 1-64 characters of letters, digits, . _ @ -")
    if args.users_command == "add":
        password = _password(args)
        problem = check_new_password(password)
        if problem:
            raise SettingsError(f"password: {problem}")
        hashed = hash_password(password)
    store = _store(args)
    try:
        now = utcnow()
        if args.users_command == "add":
            user = store.users.add(args.name, args.role, hashed, now)
            store.audit.record(now, _actor(), "admin", audit.USER_ADD, user.name, f"role {user.role}")
            out.write(f"added {user.role} {user.name}\n")
        elif args.users_command == "disable":
            user = store.users.disable(args.name)
            store.audit.record(now, _actor(), "admin", audit.USER_DISABLE, user.name, "sessions ended")
            out.write(f"disabled {user.name}; their sessions are ended\n")
        else:
            out.write(f"{'NAME':<24} {'ROLE':<8} {'STATE':<9} LAST SIGN-IN\n")
            for u in store.users.list_users():
                last = u.last_signin_at.strftime("%Y-%m-%d %H:%M UTC") if u.last_signin_at else "never"
                state = "disabled" if u.disabled else "active"
                out.write(f"{u.name:<24} {u.role:<8} {state:<9} {last}\n")
    finally:
        store.close()
    return 0
