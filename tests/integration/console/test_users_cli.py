"""`endpoint-server users add|list|disable` against the real server's database."""

from __future__ import annotations

import subprocess
import sys
from contextlib import closing
from pathlib import Path

from tests.support.console import PASSWORD, Console, add_user
from tests.support.server import run_server, subprocess_env


def users(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server_stub", "users", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=subprocess_env(),
        timeout=60,
    )


def test_add_list_disable_and_bad_input(tmp_path: Path) -> None:
    with run_server(tmp_path / "srv") as server:
        data = ["--data-dir", str(server.data_dir)]
        add_user(server, "dora", "analyst")
        con = Console(server=server)
        with closing(con.sign_in_http("dora")) as web:
            assert web.get("/").status_code == 200
            pw = tmp_path / "pw"
            pw.write_text(PASSWORD + "\n")
            again = users("add", "dora", "--role", "reader", "--password-file", str(pw), *data)
            assert again.returncode == 2 and "exists already" in again.stderr
            listed = users("list", *data)
            assert listed.returncode == 0 and "dora" in listed.stdout and "analyst" in listed.stdout
            done = users("disable", "dora", *data)
            assert done.returncode == 0, done.stderr
            # The open session ended with the account.
            assert web.get("/", follow_redirects=False).headers["location"] == "/signin"
        assert "disabled" in users("list", *data).stdout
        short = tmp_path / "short"
        short.write_text("abc\n")
        bad = [
            (["add", "x", "--role", "analyst", "--password-file", str(short), *data], "at least 10"),
            (["add", "x", "--role", "analyst", *data], "--password-file"),  # no terminal to prompt on
            (["add", "bad name!", "--role", "reader", "--password-file", str(pw), *data], "NAME"),
            (["add", "x", "--role", "root", "--password-file", str(pw), *data], "invalid choice"),
            (["disable", "nobody", *data], "no user named"),
            (["list", "--data-dir", str(tmp_path / "missing")], "not a directory"),
            (["list"], "--data-dir"),
        ]
        for args, message in bad:
            out = users(*args, stdin="")
            assert out.returncode == 2, (args, out.stdout, out.stderr)
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0], (args, out.stderr)
        audit = con.api("/audit")["items"]
        assert [(e["action"], e["target"]) for e in audit[:2]] == [
            ("user_disable", "dora"),
            ("user_add", "dora"),
        ]
