"""The console under test: a real server with named users and a seeded fleet, and a real browser.

    with seeded_console(tmp) as con:          # server + users reader/analyst/admin + data
        con.sign_in_http("alice")              # httpx client with a session cookie
    browser()                                  # Debian's chromium through Playwright (never downloaded)

Screenshots go to the test's artifacts directory: $ENDPOINT_TEST_ARTIFACTS/<test> (default
.artifacts/tests/<test> in the repository).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.support.ci_skip import require
from tests.support.server import REPO_ROOT, LiveServer, run_server, subprocess_env

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"
USERS = {"rita": "reader", "alice": "analyst", "adam": "admin", "lockme": "reader"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]

POLICY_V1 = """\
name: corporate
version: 1
mode: enforce
rules:
  - id: p2p-qbittorrent
    description: BitTorrent clients are not allowed on company machines
    category: p2p
    action: block
    process: {name: [qbittorrent*]}
  - id: remote-anydesk
    description: Remote-access tools need an approved ticket
    category: remote-access
    action: report
    process: {name: [anydesk]}
  - id: crypto-miner
    description: Cryptocurrency miners
    category: mining
    action: block
    process: {name: [xmrig]}
"""

# (hostname, rule, category, action, process, days ago) rows the fleet reported.
_SEED: list[tuple[str, str, str, str, str, int]] = []
for _i in range(36):
    _host = ("ws-alpha", "ws-bravo", "ws-charlie", "ws-alpha")[_i % 4]
    if _i % 3 == 0:
        _SEED.append((_host, "remote-anydesk", "remote-access", "reported", "anydesk", _i % 19))
    elif _i % 5 == 0:
        _SEED.append((_host, "p2p-qbittorrent", "p2p", "kill_failed", "qbittorrent", _i % 23))
    else:
        _SEED.append((_host, "p2p-qbittorrent", "p2p", "killed", "qbittorrent", _i % 27))


def artifacts_dir(test_name: str) -> Path:
    base = Path(os.environ.get("ENDPOINT_TEST_ARTIFACTS") or REPO_ROOT / ".artifacts" / "tests")
    path = base / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:120]
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium_or_skip() -> None:
    """Skip (fail under CI=true) without Debian's chromium or Playwright for Python."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        require("Debian's chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require("Playwright for Python is not installed (the dev extra)")


@dataclass
class Console:
    server: LiveServer
    hosts: dict[str, str] = field(default_factory=dict)  # hostname -> host id

    @property
    def url(self) -> str:
        return self.server.base_url

    def sign_in_http(self, name: str, password: str = PASSWORD) -> httpx.Client:
        """An httpx client holding a session cookie of `name`."""
        client = httpx.Client(base_url=self.url, timeout=30.0)
        form = client.get("/signin")
        token = csrf_of(form.text)
        r = client.post("/signin", data={"csrf_token": token, "name": name, "password": password})
        assert r.status_code == 303, r.text
        return client

    def api(self, path: str, **params: Any) -> Any:
        with self.server.reader() as c:
            r = c.get(path, params={k: v for k, v in params.items() if v is not None})
        r.raise_for_status()
        return r.json()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def figures(html: str) -> dict[str, str]:
    """Every data-figure="key" -> its text, from a console page."""
    return {
        m.group(1): re.sub(r"<[^>]+>", "", m.group(2)).strip()
        for m in re.finditer(r'data-figure="([^"]+)"[^>]*>(.*?)</', html, re.S)
    }


def add_user(server: LiveServer, name: str, role: str, *, db_url: str | None = None) -> None:
    pw = server.data_dir.parent / "password.txt"
    pw.write_text(PASSWORD + "\n")
    storage = ["--db", db_url] if db_url else ["--data-dir", str(server.data_dir)]
    cmd = [
        sys.executable,
        "-m",
        "server_stub",
        "users",
        "add",
        name,
        "--role",
        role,
        "--password-file",
        str(pw),
    ]
    subprocess.run(cmd + storage, check=True, capture_output=True, env=subprocess_env(), timeout=60)


def seed(server: LiveServer, now: datetime | None = None) -> dict[str, str]:
    """Publish POLICY_V1, enroll three hosts, upload violations over four weeks and heartbeats."""
    now = now or datetime.now(UTC)
    assert server.publish(POLICY_V1).status_code == 200
    enrolled = {name: server.enroll(name) for name in ("ws-alpha", "ws-bravo", "ws-charlie")}
    by_host: dict[str, list[dict[str, Any]]] = {name: [] for name in enrolled}
    for i, (host, rule, category, action, process, days) in enumerate(_SEED):
        detected = now - timedelta(days=days, minutes=7 * i + 5)
        by_host[host].append(
            {
                "kind": "violation",
                "event_id": str(uuid.uuid4()),
                "detected_at": detected.isoformat(),
                "first_seen": (detected - timedelta(seconds=i % 4)).isoformat(),
                "rule_id": rule,
                "category": category,
                "action": action,
                "pid": 4000 + i,
                "process_name": process,
                "exe": f"/usr/bin/{process}",
                "username": ("alice.k", "bob.m", "carol.t")[i % 3],
                "reason": f"process name {process!r} matched rule {rule}",
                "policy_version": 1,
            }
        )
    by_host["ws-bravo"].append(
        {
            "kind": "agent",
            "event_id": str(uuid.uuid4()),
            "detected_at": (now - timedelta(hours=3)).isoformat(),
            "type": "circuit_open",
            "detail": {"stops": 12, "window_s": 60},
        }
    )
    beats = {
        "ws-alpha": {"mode": "enforce", "mode_reason": "policy mode is enforce", "circuit_state": "closed"},
        "ws-bravo": {"mode": "monitor", "mode_reason": "break-glass file present", "circuit_state": "closed"},
        "ws-charlie": {"mode": "enforce", "mode_reason": "policy mode is enforce", "circuit_state": "closed"},
    }
    for name, host in enrolled.items():
        with server.client(host.node_key) as c:
            assert c.post("/events", json={"events": by_host[name]}).status_code == 200
            beat = {"agent_version": "0.1.0", "policy_version": 1, "counters": {"scans": 100}, **beats[name]}
            assert c.post("/heartbeat", json=beat).status_code == 200
    return {name: host.host_id for name, host in enrolled.items()}


@contextlib.contextmanager
def seeded_console(workdir: Path, *, db_url: str | None = None) -> Iterator[Console]:
    with run_server(workdir, db_url=db_url) as server:
        for name, role in USERS.items():
            add_user(server, name, role, db_url=db_url)
        hosts = seed(server)
        yield Console(server=server, hosts=hosts)


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (no browser download, no network)."""
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
