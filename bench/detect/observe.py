"""Reading the probe: when did a process meet its first peer, and when was it flagged as P2P.

A case starts the probe (bench.detect.probe) before its programs, then feeds every scan line
to an `Observer`, which keeps per watched process the first scan that showed an established
peer connection and the first scan with a P2P violation, and the violations themselves.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.detect.sandbox import LineReader, LoopbackNamespace

REPO = Path(__file__).resolve().parents[2]
P2P_CATEGORY = "p2p"
SCAN_INTERVAL = 0.5


@dataclass
class Watched:
    label: str
    pid: int
    started_at: float  # time.time() when the harness started it
    ignore_peers: frozenset[str] = frozenset()  # e.g. the tracker: not a peer
    first_peer_scan: int | None = None
    first_peer_at: float | None = None
    detection_scan: int | None = None
    detection_at: float | None = None
    max_peers: int = 0
    max_udp_sockets: int = 0
    max_listening: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(sorted({v["rule_id"] for v in self.violations}))

    @property
    def scans_to_detection(self) -> int | None:
        """Scans from the first that saw a peer connection to the first that flagged it (1 = same scan)."""
        if self.detection_scan is None or self.first_peer_scan is None:
            return None
        return self.detection_scan - self.first_peer_scan + 1

    @property
    def seconds_to_detection(self) -> float | None:
        """Seconds from the start of the process to the scan that flagged it."""
        return None if self.detection_at is None else self.detection_at - self.started_at


class Observer:
    """Folds probe scan lines into `Watched` records; `everyone` also catches unexpected processes."""

    def __init__(self, categories: tuple[str, ...] = (P2P_CATEGORY,)) -> None:
        self.categories = categories  # the violations it keeps
        self.watched: dict[int, Watched] = {}
        self.others: dict[int, Watched] = {}  # processes of the namespace nobody registered
        self.scans = 0
        self.scan_seconds: list[float] = []
        self.lines: list[dict[str, Any]] = []  # every scan line, for the record

    def watch(self, item: Watched) -> Watched:
        self.watched[item.pid] = item
        return item

    def feed(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        self.scans = line["scan"]
        self.scan_seconds.append(line["scan_seconds"])
        for proc in line["processes"]:
            item = self.watched.get(proc["pid"])
            if item is None:
                item = self.others.setdefault(
                    proc["pid"], Watched(label=proc["name"], pid=proc["pid"], started_at=line["at"])
                )
            peers = [p for p in proc["established"] if p not in item.ignore_peers]
            item.max_peers = max(item.max_peers, len(peers))
            item.max_udp_sockets = max(item.max_udp_sockets, proc.get("udp_sockets", 0))
            item.max_listening = max(item.max_listening, proc.get("listening", 0))
            if peers and item.first_peer_scan is None:
                item.first_peer_scan, item.first_peer_at = line["scan"], line["at"]
            p2p = [v for v in proc["violations"] if v["category"] in self.categories]
            if p2p and item.detection_scan is None:
                item.detection_scan, item.detection_at = line["scan"], line["at"]
            seen = {v["rule_id"] for v in item.violations}
            item.violations.extend(v for v in p2p if v["rule_id"] not in seen)

    def by_name(self, name: str) -> list[Watched]:
        """Every process of that name it saw (watched or not)."""
        return [w for w in (*self.watched.values(), *self.others.values()) if w.label == name]

    def flagged_others(self) -> list[Watched]:
        return [w for w in self.others.values() if w.violations]


class Probe:
    """The report-only agent loop of bench.detect.probe, inside the case's namespace or on the host."""

    def __init__(
        self,
        ns: LoopbackNamespace,
        policy: Path,
        *,
        inside: bool = True,
        scans: int = 40,
        interval: float = SCAN_INTERVAL,
        log: Path | None = None,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "bench.detect.probe",
            "--policy",
            str(policy),
            "--netns",
            ns.netns_id,
            "--interval",
            str(interval),
            "--scans",
            str(scans),
        ]
        if not inside:
            argv.append("--all-namespaces")
        self.popen = ns.popen(argv, stdout_pipe=True, inside=inside, cwd=REPO, log=log)
        self._lines = LineReader(self.popen, "probe")
        self.interval = interval

    def next_scan(self, timeout: float = 30.0) -> dict[str, Any]:
        line: dict[str, Any] = json.loads(self._lines.readline(timeout))
        return line
