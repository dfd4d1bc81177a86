"""Real BitTorrent swarms in a loopback-only namespace, watched by the report-only agent.

Layout of a swarm (all inside one `LoopbackNamespace`):

    tracker   127.0.0.1:<tracker port>   bench.detect.tracker (HTTP, bencoded compact peer lists)
    seeder    127.0.0.2:<port>           transmission-cli with the payload made by mktorrent
    leecher   127.0.0.3:<port>           aria2c, downloads the payload from the seeder (real data)
    members   127.<n>.x.y:<port> (12)    bench.detect.swarm: idle peers that make it a swarm, each in
                                         its own /16 as internet peers are (127/8 is all loopback)

The named layout keeps the clients' names and the classic ports (tracker 6969, 51413, 6881);
the renamed layout runs copies of the same binaries under unrelated names with every port moved
off the well-known ones, so only behaviour can give them away. The evasive layout goes further,
as a user hiding a client would: renamed, tracker only, every port a random high one, and no
peer ever dials the leecher (it only dials out, as behind a NAT).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.detect.clients import (
    ARIA2,
    TRANSMISSION,
    make_torrent,
    renamed_copy,
    start_aria2,
    start_transmission,
)
from bench.detect.observe import REPO, Observer, Probe, Watched
from bench.detect.sandbox import LineReader, LoopbackNamespace, SandboxError

MEMBERS = 12
MAX_SCANS = 30
# One scan a second (a real agent scans every few seconds): a client ramps its swarm up over a
# couple of seconds, and "within 3 scans of the first peer" should not mean within 1.5 s.
SCAN_INTERVAL = 1.0


@dataclass(frozen=True)
class SwarmLayout:
    name: str
    tracker_port: int
    seeder: tuple[str, int]
    leecher: tuple[str, int]
    seeder_name: str | None = None  # run a copy of transmission-cli under this name
    leecher_name: str | None = None  # run a copy of aria2c under this name
    members: tuple[tuple[str, int], ...] = ()  # () = member_endpoints()
    members_dial_leecher: bool = True  # False: the leecher only dials out


NAMED = SwarmLayout("named", 6969, ("127.0.0.2", 51413), ("127.0.0.3", 6881))
RENAMED = SwarmLayout(
    "renamed",
    18081,
    ("127.0.0.2", 40002),
    ("127.0.0.3", 40003),
    seeder_name="notes-sync",
    leecher_name="photo-backup",
)


def member_endpoints(count: int = MEMBERS, seed: int = 7) -> tuple[tuple[str, int], ...]:
    """Members as an internet swarm has them: each in its own network, on a random high port."""
    rng = random.Random(seed)
    networks = rng.sample(range(1, 255), count)  # the /16 of each member: 127.<n>.x.y
    return tuple(
        (f"127.{n}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}", rng.randrange(20000, 65000))
        for n in networks
    )


EVASIVE = SwarmLayout(
    "evasive",
    27315,
    ("127.0.0.2", 37211),
    ("127.0.0.3", 46617),
    seeder_name="notes-sync",
    leecher_name="photo-backup",
    members=member_endpoints(seed=11),
    members_dial_leecher=False,
)


def _ep(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


@dataclass
class SwarmView:
    """What one agent (probe) saw of the swarm."""

    observer: Observer
    seeder: Watched
    leecher: Watched

    @property
    def done(self) -> bool:
        return self.seeder.detection_scan is not None and self.leecher.detection_scan is not None


@dataclass
class SwarmRun:
    layout: SwarmLayout
    netns_id: str
    payload_ok: bool  # the leecher received the seeder's payload, byte for byte
    views: dict[str, SwarmView]  # "inside" (agent in the namespace), "host" (agent outside)


PLACES = ("inside", "host")


def run_swarm(
    layout: SwarmLayout, policy: Path, workdir: Path, *, places: tuple[str, ...] = ("inside",)
) -> SwarmRun:
    """Start the swarm with a probe in each of `places` watching it; return once every probe flagged
    both clients and the payload arrived intact, or after MAX_SCANS scans."""
    if not places or set(places) - set(PLACES):
        raise ValueError(f"places must be among {PLACES}")
    workdir.mkdir(parents=True, exist_ok=True)
    tracker_ep = ("127.0.0.1", layout.tracker_port)
    members = list(layout.members) or member_endpoints()
    with LoopbackNamespace() as ns:
        torrent = make_torrent(workdir, f"http://{_ep(tracker_ep)}/announce")
        tracker_argv = [sys.executable, "-m", "bench.detect.tracker", "--port", str(layout.tracker_port)]
        for member in members:
            tracker_argv += ["--peer", _ep(member)]
        tracker = LineReader(
            ns.popen(tracker_argv, stdout_pipe=True, cwd=REPO, log=workdir / "tracker.err"), "tracker"
        )
        tracker.wait_for(lambda line: line == "ready", timeout=20)
        swarm_argv = [sys.executable, "-m", "bench.detect.swarm", "--info-hash", torrent.info_hash.hex()]
        for member in members:
            swarm_argv += ["--member", _ep(member)]
        swarm_argv += ["--dial", _ep(layout.seeder)]
        if layout.members_dial_leecher:
            swarm_argv += ["--dial", _ep(layout.leecher)]
        swarm = LineReader(
            ns.popen(swarm_argv, stdout_pipe=True, cwd=REPO, log=workdir / "swarm.err"), "swarm"
        )
        swarm.wait_for(lambda line: line == "ready", timeout=20)

        probes = {
            place: Probe(
                ns,
                policy,
                inside=place == "inside",
                scans=MAX_SCANS,
                interval=SCAN_INTERVAL,
                log=workdir / f"probe-{place}.err",
            )
            for place in places
        }
        observers = {place: Observer() for place in places}
        for place, probe in probes.items():
            observers[place].feed(probe.next_scan(timeout=60))  # a baseline scan before any client runs

        bin_dir = workdir / "bin"
        seeder_bin = (
            renamed_copy(TRANSMISSION, layout.seeder_name, bin_dir) if layout.seeder_name else TRANSMISSION
        )
        seeder_popen = start_transmission(
            ns, torrent, workdir, bind_ip=layout.seeder[0], port=layout.seeder[1], binary=seeder_bin
        )
        seeder_started = time.time()
        ignore = frozenset({_ep(tracker_ep)})
        seeder_label = f"{layout.seeder_name or TRANSMISSION} (seeder)"
        # transmission announces "stopped" while it verifies the data, then "started"
        tracker.wait_for(lambda line: _ep(layout.seeder) in line and '"started"' in line, timeout=30)
        leecher_bin = renamed_copy(ARIA2, layout.leecher_name, bin_dir) if layout.leecher_name else ARIA2
        download = workdir / "leech"
        leecher_popen = start_aria2(
            ns, torrent, workdir, bind_ip=layout.leecher[0], port=layout.leecher[1], download_dir=download,
            binary=leecher_bin,
        )  # fmt: skip
        leecher_started = time.time()
        leecher_label = f"{layout.leecher_name or ARIA2} (leecher)"
        views = {
            place: SwarmView(
                observer=obs,
                seeder=obs.watch(Watched(seeder_label, seeder_popen.pid, seeder_started, ignore)),
                leecher=obs.watch(Watched(leecher_label, leecher_popen.pid, leecher_started, ignore)),
            )
            for place, obs in observers.items()
        }
        payload_ok = False
        received = download / torrent.payload.name
        running = dict(probes)
        while running:
            for place, probe in list(running.items()):
                try:
                    observers[place].feed(probe.next_scan(timeout=30))
                except SandboxError:
                    del running[place]  # the probe ran all its scans
            if not payload_ok and received.exists():  # preallocated: complete when the digest matches
                payload_ok = hashlib.sha256(received.read_bytes()).hexdigest() == torrent.payload_sha256
            if payload_ok and all(view.done for view in views.values()):
                break
        (workdir / "tracker.out").write_text("\n".join(tracker.lines) + "\n")
        return SwarmRun(layout, ns.netns_id, payload_ok, views)
