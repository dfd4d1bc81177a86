"""Real BitTorrent clients for the detection cases, configured so they cannot reach past loopback.

transmission-cli (the subject: flagged by name, and renamed by behaviour) and aria2c (its peer:
transmission refuses peers on 127.0.0.0/8 when it would dial them -- libtransmission drops
"martian" addresses from tracker answers -- but accepts them inbound, so aria2c dials it and
the two exchange the real payload). Both run only inside a loopback-only namespace
(`sandbox.LoopbackNamespace`), with DHT, local peer discovery, peer exchange and UPnP/NAT-PMP
switched off, bound to one 127.x address each, and announcing to a tracker on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from bench.detect.bencode import info_hash
from bench.detect.sandbox import LoopbackNamespace

TRANSMISSION = "transmission-cli"
ARIA2 = "aria2c"
MKTORRENT = "mktorrent"
PACKAGES = {TRANSMISSION: "transmission-cli", ARIA2: "aria2", MKTORRENT: "mktorrent"}


def missing_clients() -> list[str]:
    """Debian packages whose programs are absent."""
    return sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})


@dataclass(frozen=True)
class Torrent:
    path: Path
    payload: Path
    info_hash: bytes

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.payload.read_bytes()).hexdigest()


def make_torrent(workdir: Path, tracker_url: str, size: int = 2 * 1024 * 1024) -> Torrent:
    """Random payload (the seeder's data) and a private .torrent for it, made by mktorrent."""
    data_dir = workdir / "seed-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    payload = data_dir / "payload.bin"
    payload.write_bytes(os.urandom(size))
    torrent = workdir / "payload.torrent"
    subprocess.run(
        [MKTORRENT, "-p", "-l", "16", "-a", tracker_url, "-o", str(torrent), str(payload)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return Torrent(path=torrent, payload=payload, info_hash=info_hash(torrent.read_bytes()))


def renamed_copy(program: str, name: str, directory: Path) -> Path:
    """The client's binary copied under an unrelated name (its own inode; `exe` is this path)."""
    source = shutil.which(program)
    if source is None:
        raise FileNotFoundError(program)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    shutil.copyfile(source, target)
    target.chmod(0o755)
    return target


def named_python(name: str, directory: Path) -> Path:
    """This interpreter copied under `name` (its own inode): a stand-in the agent sees as `name`."""
    target = directory / name
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.realpath(sys.executable), target)
        target.chmod(0o755)
    return target


def python_env() -> dict[str, str]:
    """Environment for a copied interpreter: it cannot find its stdlib from its own location."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env["PYTHONHOME"] = f"{sys.base_prefix}:{sys.base_exec_prefix}"
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        env["LD_LIBRARY_PATH"] = str(libdir)
    return env


def transmission_settings(bind_ip: str) -> dict[str, object]:
    """settings.json of libtransmission: nothing that discovers or reaches peers beyond the tracker."""
    return {
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "port-forwarding-enabled": False,
        "utp-enabled": False,
        "rpc-enabled": False,
        "blocklist-enabled": False,
        "encryption": 0,  # prefer plaintext: the swarm members speak the plain handshake only
        "bind-address-ipv4": bind_ip,
        "bind-address-ipv6": "::1",
        "peer-port-random-on-start": False,
        "ratio-limit-enabled": False,
        "idle-seeding-limit-enabled": False,
        "speed-limit-up-enabled": False,
        "speed-limit-down-enabled": False,
        "message-level": 1,
    }


def start_transmission(
    ns: LoopbackNamespace,
    torrent: Torrent,
    workdir: Path,
    *,
    bind_ip: str,
    port: int,
    binary: str | Path = TRANSMISSION,
    download_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    """transmission-cli seeding (download_dir None: the torrent's own data) or leeching."""
    config = workdir / f"transmission-{bind_ip}"
    config.mkdir(parents=True, exist_ok=True)
    (config / "settings.json").write_text(json.dumps(transmission_settings(bind_ip), indent=1))
    data = download_dir or torrent.payload.parent
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "-g",
        str(config),
        "-w",
        str(data),
        "-p",
        str(port),
        "-M",
        "-B",
        "-et",
        str(torrent.path),
    ]
    return ns.popen(argv, log=workdir / f"transmission-{bind_ip}.log", cwd=workdir)


def start_aria2(
    ns: LoopbackNamespace,
    torrent: Torrent,
    workdir: Path,
    *,
    bind_ip: str,
    port: int,
    download_dir: Path,
    binary: str | Path = ARIA2,
) -> subprocess.Popen[bytes]:
    """aria2c leeching, then seeding until killed; DHT, LPD and peer exchange off."""
    download_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "--no-conf",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        f"--interface={bind_ip}",
        f"--listen-port={port}",
        "--bt-min-crypto-level=plain",
        "--bt-require-crypto=false",
        "--seed-ratio=0.0",
        "--summary-interval=0",
        "--console-log-level=warn",
        f"--log={workdir / f'aria2-{bind_ip}.detail.log'}",
        "--log-level=" + os.environ.get("ARIA2_LOG", "notice"),
        "--follow-torrent=false",
        f"--dir={download_dir}",
        str(torrent.path),
    ]
    return ns.popen(argv, log=workdir / f"aria2-{bind_ip}.log", cwd=workdir)
