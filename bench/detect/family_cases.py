"""The other P2P families, and approved P2P, in loopback-only namespaces, watched by the probe.

Real clients where Debian packages one that runs headless and stays confined: aMule's daemon
(eDonkey/Kad), microdc2 (Direct Connect, logging in to a hub on 127.0.0.1:411), Tor and i2pd
(anonymity networks: reported, not blocked), Syncthing (approved P2P: no finding at all). Where
Debian has none (gtk-gnutella, Nicotine+ for Soulseek, kubo for IPFS), a socket-level stand-in
(bench.detect.standins) run by an interpreter copied under the client's name opens the sockets
the real client opens, on its ports, to peers scattered over networks as internet peers are.
Each stand-in also runs renamed with its ports moved, where only behaviour can catch it.

Every client is configured for loopback (UPnP, reseeding, discovery off where it has a switch);
the namespace has nothing but `lo`, so whatever else they try fails with "network unreachable".
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.detect.clients import named_python, python_env
from bench.detect.observe import REPO, Observer, Probe, Watched
from bench.detect.sandbox import LineReader, LoopbackNamespace, SandboxError

SCANS = 40  # at most 20 s: Syncthing makes its keys and certificate on first start
STANDINS = Path(__file__).with_name("standins.py")
CATEGORIES = ("p2p", "anonymity")


def scattered_peers(count: int, port: int | None, seed: int) -> list[tuple[str, int]]:
    """`count` peers, each in its own /16 of 127/8; on `port`, or each on a random high port."""
    rng = random.Random(seed)
    return [
        (f"127.{n}.{rng.randrange(256)}.{rng.randrange(1, 255)}", port or rng.randrange(20000, 65000))
        for n in rng.sample(range(1, 255), count)
    ]


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", **extra}


def _ep(pair: tuple[str, int]) -> str:
    return f"{pair[0]}:{pair[1]}"


def _workload(ns: LoopbackNamespace, workdir: Path, name: str, *args: str) -> None:
    argv = [sys.executable, "-m", "bench.detect.workloads", *args]
    popen = ns.popen(argv, stdout_pipe=True, cwd=REPO, log=workdir / f"{name}.err")
    LineReader(popen, name).wait_for(lambda line: line == "ready", timeout=30)


def _peers_listening(ns: LoopbackNamespace, workdir: Path, peers: list[tuple[str, int]], udp: bool) -> None:
    tcp_args = [a for p in peers for a in ("--listen", _ep(p))]
    _workload(ns, workdir, "peers-tcp", "tcp-echo", *tcp_args)
    if udp:
        _workload(ns, workdir, "peers-udp", "udp-echo", *[a for p in peers for a in ("--bind", _ep(p))])


def _standin(
    ns: LoopbackNamespace, workdir: Path, name: str, kind: str, port: int, peers: list[tuple[str, int]],
    server: tuple[str, int] | None = None,
) -> None:  # fmt: skip
    exe = named_python(name, workdir / "bin")
    argv = [str(exe), "-S", "-s", str(STANDINS), kind, "--port", str(port)]
    argv += [a for p in peers for a in ("--peer", _ep(p))]
    if server is not None:
        argv += ["--server", _ep(server)]
    popen = ns.popen(argv, stdout_pipe=True, env=python_env(), log=workdir / f"{name}.err")
    LineReader(popen, name).wait_for(lambda line: line == "ready", timeout=30)


# -- real clients -----------------------------------------------------------------------------


def amule(ns: LoopbackNamespace, workdir: Path) -> None:
    """aMule's daemon (eDonkey/Kad) on its default ports, UPnP off, no server list or Kad nodes."""
    config = workdir / "amule"
    config.mkdir(parents=True, exist_ok=True)
    password = hashlib.md5(b"loopback-only").hexdigest()
    (config / "amule.conf").write_text(
        "[eMule]\nPort=4662\nUDPPort=4672\nUDPEnable=1\nAddress=127.0.0.1\nUPnPEnabled=0\n"
        "[ExternalConnect]\nAcceptExternalConnections=1\nECAddress=127.0.0.1\nECPort=4712\n"
        f"ECPassword={password}\nUPnPECEnabled=0\n"
    )
    ns.popen(["amuled", "--config-dir", str(config)], env=_env(workdir), log=workdir / "amuled.log")


def tor(ns: LoopbackNamespace, workdir: Path) -> None:
    """The Tor daemon as a client, SOCKS on 127.0.0.1:9050 (it cannot reach a directory authority)."""
    torrc = workdir / "torrc"
    data = workdir / "tor-data"
    data.mkdir(parents=True, exist_ok=True)
    torrc.write_text(f"SocksPort 127.0.0.1:9050\nDataDirectory {data}\nClientOnly 1\nLog notice stderr\n")
    ns.popen(["tor", "--defaults-torrc", "/dev/null", "-f", str(torrc)], log=workdir / "tor.log")


def i2pd(ns: LoopbackNamespace, workdir: Path) -> None:
    """i2pd, bound to loopback, reseeding and UPnP off."""
    argv = [
        "i2pd", "--datadir", str(workdir / "i2pd"), "--host", "127.0.0.1", "--port", "27543",
        "--reseed.urls", "", "--upnp.enabled", "false", "--ipv6", "false", "--sam.enabled", "false",
        "--http.address", "127.0.0.1", "--httpproxy.address", "127.0.0.1",
        "--socksproxy.address", "127.0.0.1",
    ]  # fmt: skip
    ns.popen(argv, log=workdir / "i2pd.log")


def microdc2(ns: LoopbackNamespace, workdir: Path) -> None:
    """microdc2 (Direct Connect) typing `connect` to a hub on 127.0.0.1:411, the NMDC default."""
    _workload(ns, workdir, "hub", "tcp-echo", "--listen", "127.0.0.1:411")
    home = workdir / "dc-home"
    home.mkdir(parents=True, exist_ok=True)
    client = ns.popen(["microdc2"], stdin_pipe=True, env=_env(home), log=workdir / "microdc2.log")
    assert client.stdin is not None
    client.stdin.write(b"set nick loopback-user\nconnect 127.0.0.1:411\n")
    client.stdin.flush()  # the pipe stays open: microdc2 waits for more commands, connected


def syncthing(ns: LoopbackNamespace, workdir: Path) -> None:
    """Syncthing, the approved file synchroniser, from its Debian package (/usr/bin/syncthing)."""
    argv = [
        "syncthing", "serve", "--home", str(workdir / "syncthing"), "--no-browser", "--no-restart",
        "--no-upgrade", "--gui-address", "127.0.0.1:8384",
    ]  # fmt: skip
    env = _env(workdir, STNODEFAULTFOLDER="1", STNOUPGRADE="1")
    ns.popen(argv, env=env, log=workdir / "syncthing.log")


# -- stand-ins (no Debian package) ------------------------------------------------------------


def gnutella(ns: LoopbackNamespace, workdir: Path) -> None:
    """gtk-gnutella: TCP+UDP on 6346, ten ultrapeers on 6346, UDP pings (stand-in)."""
    peers = scattered_peers(10, 6346, seed=21)
    _peers_listening(ns, workdir, peers, udp=True)
    _standin(ns, workdir, "gtk-gnutella", "gnutella", 6346, peers)


def gnutella_renamed(ns: LoopbackNamespace, workdir: Path) -> None:
    """gtk-gnutella renamed, on port 27146, its ultrapeers on scattered ports (stand-in)."""
    peers = scattered_peers(10, None, seed=22)
    _peers_listening(ns, workdir, peers, udp=True)
    _standin(ns, workdir, "notes-indexer", "gnutella", 27146, peers)


def soulseek(ns: LoopbackNamespace, workdir: Path) -> None:
    """Nicotine+: logged in to the Soulseek server on 2242, browsing ten peers (stand-in)."""
    server = ("127.0.0.1", 2242)
    peers = scattered_peers(10, None, seed=23)
    _peers_listening(ns, workdir, [server, *peers], udp=False)
    _standin(ns, workdir, "nicotine", "soulseek", 2234, peers, server=server)


def ipfs(ns: LoopbackNamespace, workdir: Path) -> None:
    """kubo (`ipfs daemon`): swarm port 4001 over TCP and QUIC, ten peers on 4001 (stand-in)."""
    peers = scattered_peers(10, 4001, seed=24)
    _peers_listening(ns, workdir, peers, udp=True)
    _standin(ns, workdir, "ipfs", "ipfs", 4001, peers)


def ipfs_renamed(ns: LoopbackNamespace, workdir: Path) -> None:
    """kubo renamed, swarm port moved to 27401, peers on their own ports (stand-in)."""
    peers = scattered_peers(10, None, seed=25)
    _peers_listening(ns, workdir, peers, udp=True)
    _standin(ns, workdir, "asset-cache", "ipfs", 27401, peers)


@dataclass(frozen=True)
class FamilyCase:
    name: str
    family: str
    program: str  # the process name to watch
    start: Callable[[LoopbackNamespace, Path], None]
    expected: frozenset[str]  # rule ids that must all fire; empty: no finding at all (approved)
    exact: bool = False  # nothing but `expected` may fire (a renamed client: behaviour alone)
    package: str | None = None  # the Debian package of a real client

    @property
    def description(self) -> str:
        return (self.start.__doc__ or "").strip().splitlines()[0]

    @property
    def approved(self) -> bool:
        return not self.expected


def _rules(*ids: str) -> frozenset[str]:
    return frozenset(ids)


CASES: tuple[FamilyCase, ...] = (
    FamilyCase("amule", "eDonkey/Kad", "amuled", amule, _rules("p2p-emule", "p2p-edonkey-ports"),
               package="amule-daemon"),
    FamilyCase("microdc2", "Direct Connect", "microdc2", microdc2,
               _rules("p2p-direct-connect", "p2p-direct-connect-hub"), package="microdc2"),
    FamilyCase("tor", "Tor", "tor", tor, _rules("anon-tor", "anon-tor-socks"), package="tor"),
    FamilyCase("i2pd", "I2P", "i2pd", i2pd, _rules("anon-i2p"), package="i2pd"),
    FamilyCase("gtk-gnutella (stand-in)", "Gnutella", "gtk-gnutella", gnutella,
               _rules("p2p-gnutella", "p2p-gnutella-ports", "p2p-gnutella-outbound", "p2p-behaviour")),
    FamilyCase("gtk-gnutella renamed (stand-in)", "Gnutella", "notes-indexer", gnutella_renamed,
               _rules("p2p-behaviour"), exact=True),
    FamilyCase("nicotine (stand-in)", "Soulseek", "nicotine", soulseek,
               _rules("p2p-soulseek", "p2p-soulseek-server", "p2p-behaviour")),
    FamilyCase("kubo (stand-in)", "IPFS", "ipfs", ipfs,
               _rules("p2p-ipfs", "p2p-ipfs-swarm", "p2p-ipfs-outbound", "p2p-behaviour")),
    FamilyCase("kubo renamed (stand-in)", "IPFS", "asset-cache", ipfs_renamed, _rules("p2p-behaviour"),
               exact=True),
    FamilyCase("syncthing (approved)", "Syncthing", "syncthing", syncthing, frozenset(), package="syncthing"),
)  # fmt: skip


def missing_package(case: FamilyCase) -> str | None:
    if case.package is None or shutil.which(case.program) or Path("/usr/sbin", case.program).exists():
        return None
    return case.package


@dataclass
class FamilyRun:
    case: FamilyCase
    observer: Observer
    seen: list[Watched]  # the processes of the watched program

    @property
    def found(self) -> frozenset[str]:
        return frozenset(rule for w in self.seen for rule in w.rule_ids)

    @property
    def actions(self) -> dict[str, str]:
        return {v["rule_id"]: v["action"] for w in self.seen for v in w.violations}

    @property
    def active(self) -> bool:
        """The program ran and held sockets (a client that exited at once proves nothing)."""
        return any(w.max_peers or w.max_udp_sockets or w.max_listening for w in self.seen)

    @property
    def ok(self) -> bool:
        if not self.active:
            return False
        if self.case.approved:
            return not self.found
        return self.case.expected <= self.found and (not self.case.exact or self.found == self.case.expected)


def run_family(case: FamilyCase, policy: Path, workdir: Path, *, scans: int = SCANS) -> FamilyRun:
    workdir.mkdir(parents=True, exist_ok=True)
    with LoopbackNamespace() as ns:
        probe = Probe(ns, policy, scans=scans, log=workdir / "probe.err")
        observer = Observer(categories=CATEGORIES)
        observer.feed(probe.next_scan(timeout=60))  # baseline before the client starts
        case.start(ns, workdir)
        active_since: float | None = None
        while True:
            try:
                observer.feed(probe.next_scan(timeout=30))
            except SandboxError:
                break  # the probe ran all its scans
            run = FamilyRun(case, observer, observer.by_name(case.program))
            if run.active and active_since is None:
                active_since = time.monotonic()
            # approved software: give it a few scans with its sockets open to be (wrongly) flagged
            settled = active_since is not None and time.monotonic() - active_since > 3
            if run.ok if not case.approved else settled:
                break
        return FamilyRun(case, observer, observer.by_name(case.program))
