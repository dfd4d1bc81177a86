"""The DNS filter and the nftables table for real: `endpoint-agent run --dns-filter on` in a
loopback-only network namespace whose /etc/resolv.conf is a bind mount of a temporary file.

A test authoritative server (tests/support/dns_zone.py) answers site-a.test -> 127.0.0.2 and
blocked.test -> 127.0.0.3, an HTTP server listens on each address, and curl is the user's
program. The agent must point the namespace's resolver at its forwarder, let site-a.test
through, refuse blocked.test (recorded with curl as the asking process and the domain), refuse
a direct connection to blocked.test's address through its nftables set, fail open when the
upstream dies, and give the resolver back on stop and at the next start after a kill -9.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from endpoint_agent.dns.resolver import MARKER
from tests.support.ci_skip import require
from tests.support.resolver_sandbox import ResolverSandbox, resolver_sandbox_missing

pytestmark = pytest.mark.root

ORIGINAL = "# the namespace's own resolver configuration\nnameserver 127.0.0.2\n"
POLICY = """
name: dns-test
version: 1
mode: enforce
rules:
  - id: blocked-sites
    category: web
    action: block
    enforce: connection
    message: "This site is blocked by the acceptable-use policy."
    network: {domain: ["blocked.test", "*.blocked.test"]}
  - id: report-site-a
    category: web
    action: report
    process: {name: curl}
    network: {domain: site-a.test}
"""


def _missing() -> str | None:
    reason = resolver_sandbox_missing()
    if reason is not None:
        return reason
    for tool in ("nft", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package in .ci/packages-dns.txt)"
    return None


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Scene:
    def __init__(self, box: ResolverSandbox, tmp: Path) -> None:
        self.box = box
        self.tmp = tmp
        self.state = tmp / "state"
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(POLICY)
        (tmp / "config.yaml").write_text("{}\n")
        self.agent: subprocess.Popen[bytes] | None = None
        self.zone: subprocess.Popen[bytes] | None = None
        self.log = tmp / "agent.log"

    def start_zone(self) -> None:
        argv = [sys.executable, "-m", "tests.support.dns_zone", "--address", "127.0.0.2"]
        argv += ["--record", "site-a.test=127.0.0.2", "--record", "blocked.test=127.0.0.3"]
        self.zone = self.box.popen(argv, stdout_pipe=True)
        assert self.zone.stdout is not None
        assert self.zone.stdout.readline().strip() == b"ready"

    def start_web(self) -> None:
        for ip, body in (("127.0.0.2", "this is site a"), ("127.0.0.3", "this is the blocked site")):
            root = self.tmp / ip
            root.mkdir()
            (root / "index.html").write_text(body)
            self.box.popen(
                [sys.executable, "-m", "http.server", "80", "--bind", ip, "--directory", str(root)]
            )
        # Each server listens when it has started: wait for both (under load the second may lag).
        for ip in ("127.0.0.2", "127.0.0.3"):
            _wait(lambda ip=ip: self.curl(f"http://{ip}/").returncode == 0, 45, f"the web server on {ip}")

    def start_agent(self, dns_filter: str = "on") -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "ENDPOINT_AGENT_CONFIG": str(self.tmp / "config.yaml"),
            "ENDPOINT_AGENT_NOTIFY": "false",
            "ENDPOINT_AGENT_PROCESS_EVENTS": "false",
            "ENDPOINT_AGENT_ENFORCE_SCOPE_PID": str(self.box.holder_pid),  # never signal anything else
            "ENDPOINT_AGENT_BREAK_GLASS_FILE": str(self.tmp / "break-glass"),
        }
        argv = [sys.executable, "-m", "endpoint_agent", "run", "--policy", str(self.policy)]
        argv += ["--state-dir", str(self.state), "--dns-filter", dns_filter, "--scan-interval", "1"]
        argv += ["--log-level", "DEBUG"]
        self.agent = self.box.popen(argv, log=self.log, env=env)
        return self.agent

    def stop_agent(self, sig: int = signal.SIGTERM) -> int:
        assert self.agent is not None
        self.agent.send_signal(sig)
        code = self.agent.wait(timeout=30)
        self.agent = None
        return code

    def curl(self, url: str) -> subprocess.CompletedProcess[bytes]:
        return self.box.call(["curl", "-sS", "--max-time", "20", url])

    def resolver_managed(self) -> bool:
        return self.box.resolv_conf.read_text().startswith(MARKER)

    def table(self) -> dict[str, object] | None:
        done = self.box.call(["nft", "-j", "list", "table", "inet", "endpoint_agent"])
        return json.loads(done.stdout) if done.returncode == 0 else None

    def learned(self, address: str) -> bool:
        table = self.table()
        if table is None:
            return False
        for item in table["nftables"]:  # type: ignore[index]
            elements = item.get("set", {}).get("elem", []) if isinstance(item, dict) else []
            for element in elements:
                value = element.get("elem", {}).get("val") if isinstance(element, dict) else element
                if value == address:
                    return True
        return False

    def violations(self) -> list[dict[str, object]]:
        env = {**os.environ, "ENDPOINT_AGENT_CONFIG": str(self.tmp / "config.yaml")}
        done = subprocess.run(
            [sys.executable, "-m", "endpoint_agent", "violations", "--json", "--state-dir", str(self.state)],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def status(self) -> dict[str, object]:
        return json.loads((self.state / "status.json").read_text())

    def wait_running(self) -> None:
        """Until this agent wrote its status after a scan (its signal handlers are in place)."""
        assert self.agent is not None
        pid = self.agent.pid

        def running() -> bool:
            try:
                status = self.status()
            except (OSError, ValueError):
                return False
            return status.get("pid") == pid and status.get("last_scan") is not None

        _wait(running, 30, "the agent's first scan")

    def agent_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    require(_missing())
    with ResolverSandbox(tmp_path / "resolv.conf", ORIGINAL) as box:
        yield Scene(box, tmp_path)


def test_blocks_by_domain_records_the_asker_refuses_the_address_and_restores_the_resolver(
    scene: Scene,
) -> None:
    scene.start_zone()
    scene.start_web()
    assert scene.curl("http://127.0.0.3/").returncode == 0  # reachable before the agent
    assert scene.curl("http://blocked.test/").returncode == 0  # and resolvable

    scene.start_agent()
    _wait(scene.resolver_managed, 30, "the agent to point the resolver at its filter")
    _wait(lambda: scene.table() is not None, 30, "the nftables table")
    try:
        site_a = scene.curl("http://site-a.test/")
        assert site_a.returncode == 0, site_a.stderr
        assert site_a.stdout == b"this is site a"

        # Over TCP too (what resolvers fall back to for large answers).
        ask_tcp = (
            "import sys; from dnslib import DNSRecord\n"
            "raw = DNSRecord.question(sys.argv[1]).send('127.0.0.153', 53, tcp=True, timeout=5)\n"
            "r = DNSRecord.parse(raw)\n"
            "print(r.header.rcode, *[str(rr.rdata) for rr in r.rr])\n"
        )
        tcp = [
            scene.box.call([sys.executable, "-c", ask_tcp, name]) for name in ("site-a.test", "blocked.test")
        ]
        assert [t.stdout.decode().split() for t in tcp] == [["0", "127.0.0.2"], ["3"]], tcp

        blocked = scene.curl("http://blocked.test/")
        assert blocked.returncode == 6, blocked  # curl: could not resolve host
        assert scene.curl("http://www.blocked.test/").returncode == 6

        # The blocked name was still resolved upstream, so its address is in the rule's set.
        _wait(lambda: scene.learned("127.0.0.3"), 45, "127.0.0.3 in the nftables set")
        direct = scene.curl("http://127.0.0.3/")
        assert direct.returncode == 7, direct  # curl: connection refused
        probe = "import socket; socket.create_connection(('127.0.0.3', 80), 3)"
        refused = scene.box.call([sys.executable, "-c", probe])
        assert b"ConnectionRefusedError" in refused.stderr, refused.stderr  # a reset, not a timeout
        assert scene.curl("http://127.0.0.2/").returncode == 0  # other addresses are untouched

        def recorded() -> list[dict[str, object]]:
            return [v for v in scene.violations() if v["rule_id"] == "blocked-sites"]

        _wait(lambda: len(recorded()) >= 3, 45, "the blocked queries to be recorded")
        over_tcp = [v for v in recorded() if str(v["process_name"]).startswith("python")]
        assert [v["connection"]["proto"] for v in over_tcp] == ["tcp"]  # type: ignore[index]
        found = [v for v in recorded() if v["process_name"] == "curl"]
        assert {v["action"] for v in found} == {"connection_blocked"}
        domains = {v["connection"]["domain"] for v in found}  # type: ignore[index]
        assert domains == {"blocked.test", "www.blocked.test"}
        assert all("DNS query for" in str(v["reason"]) for v in found)

        reported = [v for v in scene.violations() if v["rule_id"] == "report-site-a"]
        assert [v["action"] for v in reported] == ["reported"]
        assert reported[0]["process_name"] == "curl"
        # Once per (process, domain) per interval: a second identical query adds nothing new...
        # (each curl is a new process, so it is a new record; the same process is not re-recorded)
        status = scene.status()
        assert status["dns_filter"]["state"] == "serving"  # type: ignore[index]
        assert status["netfilter"]["active"] is True  # type: ignore[index]
        env = {**os.environ, "ENDPOINT_AGENT_CONFIG": str(scene.tmp / "config.yaml")}
        shown = subprocess.run(
            [sys.executable, "-m", "endpoint_agent", "status", "--state-dir", str(scene.state)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert "DNS filter: serving on 127.0.0.153:53" in shown.stdout, shown
        assert "nftables table inet endpoint_agent: 1 rule(s)" in shown.stdout
    finally:
        code = scene.stop_agent()
    assert code == 0, scene.agent_log()[-3000:]
    assert scene.box.resolv_conf.read_text() == ORIGINAL
    assert scene.table() is None  # its table is gone with it
    assert scene.curl("http://127.0.0.3/").returncode == 0
    assert scene.curl("http://blocked.test/").returncode == 0


def test_kill_9_leaves_the_resolver_to_the_next_start_which_restores_it(scene: Scene) -> None:
    scene.start_zone()
    scene.start_agent()
    _wait(scene.resolver_managed, 30, "the agent to point the resolver at its filter")
    _wait(lambda: scene.table() is not None, 30, "the nftables table")
    scene.stop_agent(signal.SIGKILL)
    assert scene.resolver_managed()  # nobody could restore it...
    assert scene.table() is not None

    scene.start_agent(dns_filter="off")  # ...until the next start, whatever its settings
    _wait(lambda: scene.box.resolv_conf.read_text() == ORIGINAL, 30, "the resolver to be restored")
    scene.wait_running()
    log = scene.agent_log()
    assert "nftables table left by an earlier run removed" in log
    assert "resolver configuration left by an earlier run restored" in log
    assert scene.status()["dns_filter"]["state"] == "off"  # type: ignore[index]
    assert scene.stop_agent() == 0
    assert scene.box.resolv_conf.read_text() == ORIGINAL
    assert scene.table() is None

    # The service manager's hook (ExecStopPost, uninstall) does the same without an agent.
    scene.start_agent()
    _wait(scene.resolver_managed, 30, "the agent to point the resolver at its filter")
    _wait(lambda: scene.table() is not None, 30, "the nftables table")
    scene.stop_agent(signal.SIGKILL)
    hook = [sys.executable, "-m", "endpoint_agent", "restore-network", "--state-dir", str(scene.state)]
    hook += ["--config", str(scene.tmp / "config.yaml")]
    done = scene.box.call(hook)
    assert done.returncode == 0, done.stderr
    assert scene.box.resolv_conf.read_text() == ORIGINAL
    assert scene.table() is None
    again = scene.box.call(hook)
    assert again.returncode == 0 and scene.box.resolv_conf.read_text() == ORIGINAL  # idempotent


def test_fails_open_when_the_upstream_dies(scene: Scene) -> None:
    scene.start_zone()
    scene.start_agent()
    _wait(scene.resolver_managed, 30, "the agent to point the resolver at its filter")
    assert scene.zone is not None
    scene.box.reaper.reap_one(scene.zone.pid)  # the only upstream is gone
    _wait(lambda: scene.box.resolv_conf.read_text() == ORIGINAL, 30, "the supervisor to restore the resolver")
    assert scene.box.resolv_conf.read_text() == ORIGINAL
    _wait(lambda: scene.status()["dns_filter"]["state"] == "failed_open", 30, "status failed_open")  # type: ignore[index]

    scene.start_zone()  # the upstream is back: the filter takes over again
    _wait(scene.resolver_managed, 30, "the resolver to point at the filter again")
    assert scene.stop_agent() == 0
    assert scene.box.resolv_conf.read_text() == ORIGINAL


MONITOR_POLICY = """
name: dns-test-monitor
version: 1
mode: monitor
rules:
  - id: blocked-sites
    action: block
    enforce: connection
    network: {domain: blocked.test}
  - id: site-a-over-http
    action: report
    network: {domain: site-a.test, remote_port: 80}
"""

HOLD = (
    "import socket, sys, time\n"
    "s = socket.create_connection(('site-a.test', 80), 5)\n"
    "print('connected', flush=True)\n"
    "time.sleep(60)\n"
)


def test_monitor_mode_answers_adds_no_table_and_connections_carry_the_domain(scene: Scene) -> None:
    scene.policy.write_text(MONITOR_POLICY)
    scene.start_zone()
    scene.start_web()
    scene.start_agent()
    _wait(scene.resolver_managed, 30, "the agent to point the resolver at its filter")
    scene.wait_running()
    try:
        answered = scene.curl("http://blocked.test/")
        assert answered.returncode == 0 and answered.stdout == b"this is the blocked site"
        holder = scene.box.popen([sys.executable, "-c", HOLD], stdout_pipe=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"connected"

        def found(rule: str) -> list[dict[str, object]]:
            return [v for v in scene.violations() if v["rule_id"] == rule]

        _wait(lambda: found("blocked-sites") and found("site-a-over-http"), 30, "both records")
        [would] = found("blocked-sites")
        assert (would["action"], would["process_name"]) == ("would_block", "curl")
        conns = found("site-a-over-http")
        assert {v["action"] for v in conns} == {"reported"}
        connections = [v["connection"] for v in conns if v["pid"] == holder.pid]
        assert len(connections) == 1, conns  # the holder's connection, named by the learned domain
        connection = connections[0]
        assert isinstance(connection, dict)
        assert connection["domain"] == "site-a.test" and connection["raddr"] == "127.0.0.2:80"
        assert all(v["connection"]["domain"] == "site-a.test" for v in conns)  # type: ignore[index]
        assert scene.table() is None  # monitor mode adds nothing to nftables
    finally:
        assert scene.stop_agent() == 0
    assert scene.box.resolv_conf.read_text() == ORIGINAL
