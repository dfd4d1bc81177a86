"""The benign corpus: busy, legitimate network programs that must give no P2P finding.

Each case runs in its own loopback-only namespace with the report-only probe inside. The
cases are chosen to sit close to the P2P signals: many distinct client addresses with one
connection each on a high port (the {IP, port} pattern of a P2P listener), TCP and UDP to the
same hosts (QUIC on 443), many hosts on one high port (metrics scraping), many high ports on
one host (dev servers), long-lived sessions (ssh, database), bulk transfers (git, pip), and the
shapes closest to a swarm: a gateway that is a server to many and a client of many backends on
distinct high ports, a cluster client, a media call over UDP, tunnels, a build cache's short
connections, rsync to ten hosts, a browser across many networks, LAN multicast discovery.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.detect.observe import REPO, Observer, Probe
from bench.detect.sandbox import LineReader, LoopbackNamespace, SandboxError

SCANS = 5


def _workload(ns: LoopbackNamespace, workdir: Path, name: str, *args: str) -> None:
    """Start `python -m bench.detect.workloads ...` in the namespace and wait until it is ready."""
    argv = [sys.executable, "-m", "bench.detect.workloads", *args]
    popen = ns.popen(argv, stdout_pipe=True, cwd=REPO, log=workdir / f"{name}.err")
    LineReader(popen, name).wait_for(lambda line: line == "ready", timeout=30)


def _addresses(prefix: str, count: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(1, count + 1)]


def _targets(addresses: list[str], port: int) -> list[str]:
    out: list[str] = []
    for address in addresses:
        out += ["--target", f"{address}:{port}"]
    return out


# -- the cases ------------------------------------------------------------------------------


def http_many_clients(ns: LoopbackNamespace, workdir: Path) -> None:
    """A web server on a high port; 24 clients from 24 addresses, one keep-alive connection each."""
    _workload(ns, workdir, "http-server", "http-server", "--port", "18080")
    _workload(
        ns, workdir, "http-clients", "clients", "--target", "127.0.0.1:18080", "--protocol", "http",
        "--sources", *_addresses("127.0.2", 24),
    )  # fmt: skip


def https_many_hosts(ns: LoopbackNamespace, workdir: Path) -> None:
    """A browser-like client: 40 hosts on 443 over TCP, and UDP to the same hosts (QUIC)."""
    _workload(ns, workdir, "tls-sink", "sink", "--port", "443", "--udp")
    _workload(ns, workdir, "browser", "clients", "--udp", *_targets(_addresses("127.0.3", 40), 443))


def dev_servers(ns: LoopbackNamespace, workdir: Path) -> None:
    """Front-end tooling talking to ten local dev servers on high ports of one host."""
    ports = [str(p) for p in range(3000, 3010)]
    _workload(ns, workdir, "dev-servers", "http-server", *[a for p in ports for a in ("--port", p)])
    _workload(
        ns, workdir, "dev-tooling", "clients", "--protocol", "http",
        *[a for p in ports for a in ("--target", f"127.0.0.1:{p}")],
    )  # fmt: skip


def metrics_scraper(ns: LoopbackNamespace, workdir: Path) -> None:
    """A metrics scraper polling 20 hosts on one high port (node exporters on 9100)."""
    _workload(ns, workdir, "exporters", "sink", "--port", "9100")
    _workload(
        ns, workdir, "scraper", "clients", "--protocol", "http", *_targets(_addresses("127.0.7", 20), 9100)
    )


def _ssh_keys(workdir: Path) -> Path:
    keys = workdir / "ssh"
    keys.mkdir(parents=True, exist_ok=True)
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True, timeout=30
        )
    shutil.copyfile(keys / "user.pub", keys / "authorized_keys")
    return keys


def _start_sshd(ns: LoopbackNamespace, workdir: Path, keys: Path, listen: list[str]) -> None:
    config = keys / "sshd_config"
    config.write_text(
        "\n".join(
            [
                *(f"ListenAddress {address}" for address in listen),
                f"HostKey {keys / 'host'}",
                f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                "PidFile none",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "MaxStartups 100",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    ns.popen([sshd, "-D", "-e", "-f", str(config)], log=workdir / "sshd.log")


def ssh_sessions(ns: LoopbackNamespace, workdir: Path) -> None:
    """sshd on a non-standard port and three ssh sessions from three addresses."""
    keys = _ssh_keys(workdir)
    _start_sshd(ns, workdir, keys, ["127.0.0.1:2222"])
    for source in _addresses("127.0.4", 3):
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(keys / "user"), "-b", source, "-p", "2222",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectionAttempts=20", "root@127.0.0.1", "echo ready; sleep 60",
        ]  # fmt: skip
        LineReader(ns.popen(argv, stdout_pipe=True, log=workdir / "ssh.err"), "ssh").wait_for(
            lambda line: line == "ready", timeout=30
        )


def git_clones(ns: LoopbackNamespace, workdir: Path) -> None:
    """git cloning over HTTP from a local server on a high port, again and again."""
    repo = workdir / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
    subprocess.run([*git, "-C", str(repo), "init", "-q"], check=True, timeout=30)
    for i in range(8):
        (repo / f"blob{i}.bin").write_bytes(os.urandom(128 * 1024))  # incompressible: the pack is ~1 MiB
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True, timeout=30)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "-m", "data"], check=True, timeout=30)
    served = workdir / "served"
    subprocess.run(
        [*git, "clone", "-q", "--bare", str(repo), str(served / "repo.git")], check=True, timeout=60
    )
    subprocess.run([*git, "-C", str(served / "repo.git"), "update-server-info"], check=True, timeout=30)
    # git's "dumb" HTTP transport over a throttled static server: each clone stays on the wire ~4 s.
    _workload(
        ns,
        workdir,
        "git-http",
        "throttled-http",
        "--root",
        str(served),
        "--port",
        "19418",
        "--rate",
        "262144",
    )
    clone = workdir / "clone"
    _workload(
        ns, workdir, "git-clones", "repeat", "--seconds", "60", "--scratch", str(clone), "--",
        "git", "clone", "-q", "http://127.0.0.1:19418/repo.git", str(clone),
    )  # fmt: skip


def _wheel(directory: Path) -> Path:
    """A minimal valid wheel (with 256 KiB of data, so the transfer takes a while)."""
    name = "demo_pkg-1.0-py3-none-any.whl"
    path = directory / name
    files = {
        "demo_pkg/__init__.py": b"",
        "demo_pkg/data.bin": hashlib.sha256(b"x").digest() * 8192,
        "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{n},,\n" for n in files) + "demo_pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, data in files.items():
            zf.writestr(n, data)
        zf.writestr("demo_pkg-1.0.dist-info/RECORD", record)
    return path


def pip_downloads(ns: LoopbackNamespace, workdir: Path) -> None:
    """pip downloading from a local package index (served slowly on loopback), again and again."""
    root = workdir / "index"
    files = root / "files"
    simple = root / "simple" / "demo-pkg"
    files.mkdir(parents=True, exist_ok=True)
    simple.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(files)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (simple / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>\n'
    )
    _workload(
        ns, workdir, "index", "throttled-http", "--root", str(root), "--port", "18090", "--rate", "131072"
    )
    out = workdir / "downloads"
    _workload(
        ns, workdir, "pip", "repeat", "--seconds", "60", "--scratch", str(out), "--",
        sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-cache-dir", "--isolated",
        "--disable-pip-version-check", "--index-url", "http://127.0.0.1:18090/simple/",
        "-d", str(out), "demo-pkg",
    )  # fmt: skip


def redis_clients(ns: LoopbackNamespace, workdir: Path) -> None:
    """redis-server on a high port and 20 clients from 20 addresses pinging it."""
    ns.popen(
        ["redis-server", "--port", "16379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "no"],
        log=workdir / "redis.log",
    )  # fmt: skip
    _workload(
        ns, workdir, "redis-clients", "clients", "--target", "127.0.0.1:16379", "--protocol", "redis",
        "--sources", *_addresses("127.0.5", 20),
    )  # fmt: skip


def _endpoints(pairs: list[tuple[str, int]], flag: str) -> list[str]:
    out: list[str] = []
    for host, port in pairs:
        out += [flag, f"{host}:{port}"]
    return out


def api_gateway(ns: LoopbackNamespace, workdir: Path) -> None:
    """An API gateway on a high port: 20 clients in, 10 backends out on distinct addresses and ports."""
    backends = [(f"127.0.8.{i}", 20000 + 17 * i) for i in range(1, 11)]
    _workload(ns, workdir, "backends", "tcp-echo", *_endpoints(backends, "--listen"))
    _workload(ns, workdir, "gateway", "gateway", "--port", "18443", *_endpoints(backends, "--backend"))
    _workload(
        ns, workdir, "gateway-clients", "clients", "--target", "127.0.0.1:18443", "--protocol", "http",
        "--sources", *_addresses("127.0.6", 20),
    )  # fmt: skip


def cluster_client(ns: LoopbackNamespace, workdir: Path) -> None:
    """A Cassandra/Kafka-style client: a connection to each node of a 9-node cluster on one port."""
    nodes = [(f"127.0.9.{i}", 9042) for i in range(1, 10)]
    _workload(ns, workdir, "cluster", "tcp-echo", *_endpoints(nodes, "--listen"))
    _workload(
        ns, workdir, "cluster-client", "clients", "--sources", "127.0.0.1", "127.0.0.2",
        *_endpoints(nodes, "--target"),
    )  # fmt: skip


def media_call(ns: LoopbackNamespace, workdir: Path) -> None:
    """A WebRTC-like call: UDP media to 3 peers in 3 networks on high ports, STUN keepalives."""
    peers = [("127.12.0.1", 40100), ("127.13.0.1", 41200), ("127.14.0.1", 42300)]
    stun = ("127.15.0.1", 3478)
    _workload(ns, workdir, "media-peers", "udp-echo", *_endpoints([*peers, stun], "--bind"))
    _workload(ns, workdir, "call", "media", "--stun", f"{stun[0]}:{stun[1]}", *_endpoints(peers, "--peer"))


def port_forwards(ns: LoopbackNamespace, workdir: Path) -> None:
    """`kubectl port-forward` style tunnels: 4 local ports, 3 clients each, all over the API server."""
    _workload(ns, workdir, "api-server", "tcp-echo", "--listen", "127.0.0.1:6443")
    ports = [str(p) for p in range(18001, 18005)]
    _workload(
        ns, workdir, "port-forward", "tunnels", "--upstream", "127.0.0.1:6443",
        *[a for p in ports for a in ("--port", p)],
    )  # fmt: skip
    _workload(
        ns, workdir, "tunnel-clients", "clients", "--sources", *_addresses("127.0.0", 3),
        *[a for p in ports for a in ("--target", f"127.0.0.1:{p}")],
    )  # fmt: skip


def build_cache(ns: LoopbackNamespace, workdir: Path) -> None:
    """A build-cache client: hundreds of short connections to one cache server on a high port."""
    _workload(ns, workdir, "cache", "http-server", "--port", "19090")
    _workload(ns, workdir, "cache-client", "short-connections", "--target", "127.0.0.1:19090")


def rsync_hosts(ns: LoopbackNamespace, workdir: Path) -> None:
    """rsync over ssh to 10 hosts at once (a deploy), throttled so each copy stays on the wire."""
    hosts = _addresses("127.0.10", 10)
    keys = _ssh_keys(workdir)
    _start_sshd(ns, workdir, keys, [f"{h}:22" for h in hosts])
    payload = workdir / "payload.bin"
    payload.write_bytes(os.urandom(2 * 1024 * 1024))
    ssh = (
        f"ssh -F /dev/null -i {keys / 'user'} -o BatchMode=yes -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null"
    )
    for host in hosts:
        target = workdir / f"copy-{host}"
        _workload(
            ns, workdir, f"rsync-{host}", "repeat", "--seconds", "60", "--scratch", str(target), "--",
            "rsync", "-q", "--bwlimit=256", "-e", ssh, str(payload), f"root@{host}:{target}",
        )  # fmt: skip


def browser(ns: LoopbackNamespace, workdir: Path) -> None:
    """A browser: 60 HTTPS connections to hosts all over the internet, and QUIC (UDP 443) to them."""
    _workload(ns, workdir, "web", "sink", "--port", "443", "--udp")
    hosts = [f"127.{n}.1.1" for n in range(100, 160)]
    _workload(ns, workdir, "browser-tabs", "clients", "--udp", *_targets(hosts, 443))


def lan_discovery(ns: LoopbackNamespace, workdir: Path) -> None:
    """mDNS (224.0.0.251:5353) and SSDP (239.255.255.250:1900) announcing on the LAN groups."""
    ns.run(["ip", "link", "set", "lo", "multicast", "on"])
    ns.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"])
    _workload(ns, workdir, "avahi-like", "multicast")


@dataclass(frozen=True)
class BenignCase:
    name: str
    start: Callable[[LoopbackNamespace, Path], None]
    programs: tuple[str, ...] = ()  # external programs it needs (-> Debian package)

    @property
    def description(self) -> str:
        return (self.start.__doc__ or "").strip().splitlines()[0]


PACKAGES = {
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "git": "git",
    "redis-server": "redis-server",
    "rsync": "rsync",
}

CASES: tuple[BenignCase, ...] = (
    BenignCase("http-many-clients", http_many_clients),
    BenignCase("https-many-hosts", https_many_hosts),
    BenignCase("dev-servers", dev_servers),
    BenignCase("metrics-scraper", metrics_scraper),
    BenignCase("ssh", ssh_sessions, ("sshd", "ssh", "ssh-keygen")),
    BenignCase("git", git_clones, ("git",)),
    BenignCase("pip", pip_downloads),
    BenignCase("redis", redis_clients, ("redis-server",)),
    BenignCase("api-gateway", api_gateway),
    BenignCase("cluster-client", cluster_client),
    BenignCase("media-call", media_call),
    BenignCase("port-forwards", port_forwards),
    BenignCase("build-cache", build_cache),
    BenignCase("rsync-10-hosts", rsync_hosts, ("sshd", "ssh", "ssh-keygen", "rsync")),
    BenignCase("browser", browser),
    BenignCase("lan-discovery", lan_discovery),
)


def missing_packages(case: BenignCase) -> list[str]:
    def present(program: str) -> bool:
        return shutil.which(program) is not None or Path("/usr/sbin", program).exists()

    return sorted({PACKAGES[p] for p in case.programs if not present(p)})


@dataclass
class BenignRun:
    case: BenignCase
    observer: Observer

    @property
    def flagged(self) -> list[str]:
        """'name (pid): rule, rule' for every process of the case with a P2P finding."""
        return [f"{w.label} ({w.pid}): {', '.join(w.rule_ids)}" for w in self.observer.flagged_others()]

    @property
    def max_peers(self) -> int:
        """The most established TCP connections one of its processes had in a scan (activity check)."""
        return max((w.max_peers for w in self.observer.others.values()), default=0)

    @property
    def max_udp_sockets(self) -> int:
        """The most UDP sockets one of its processes held in a scan (activity check for UDP cases)."""
        return max((w.max_udp_sockets for w in self.observer.others.values()), default=0)

    @property
    def active(self) -> bool:
        """The agent saw the case's traffic at all (a case that saw nothing proves nothing)."""
        return self.max_peers >= 1 or self.max_udp_sockets >= 1


def run_benign(case: BenignCase, policy: Path, workdir: Path, *, scans: int = SCANS) -> BenignRun:
    workdir.mkdir(parents=True, exist_ok=True)
    with LoopbackNamespace() as ns:
        case.start(ns, workdir)
        probe = Probe(ns, policy, scans=scans, log=workdir / "probe.err")
        observer = Observer()
        for _ in range(scans):
            try:
                observer.feed(probe.next_scan(timeout=60))
            except SandboxError:
                break
        return BenignRun(case, observer)
