"""The benign corpus: busy, legitimate network programs that must give no P2P finding.

Each case runs in its own loopback-only namespace with the report-only probe inside. The
cases are chosen to sit close to the P2P signals: many distinct client addresses with one
connection each on a high port (the {IP, port} pattern of a P2P listener), TCP and UDP to the
same hosts (QUIC on 443), many hosts on one high port (metrics scraping), many high ports on
one host (dev servers), long-lived sessions (ssh, database), bulk transfers (git, pip).
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


def ssh_sessions(ns: LoopbackNamespace, workdir: Path) -> None:
    """sshd on a non-standard port and three ssh sessions from three addresses."""
    keys = workdir / "ssh"
    keys.mkdir(parents=True, exist_ok=True)
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True, timeout=30
        )
    shutil.copyfile(keys / "user.pub", keys / "authorized_keys")
    config = keys / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1:2222",
                f"HostKey {keys / 'host'}",
                f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                "PidFile none",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    ns.popen([sshd, "-D", "-e", "-f", str(config)], log=workdir / "sshd.log")
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
