"""Peer-to-peer behaviour per process, over a sliding window of snapshots.

A renamed or portable BitTorrent client keeps behaving like one: it talks to many hosts on
arbitrary high ports, in both directions, usually over TCP and UDP on one port. The tracker
turns the socket tables of the last few scans into per-process facts (`P2PFeatures`); the
policy engine scores them (policy/p2p.py). The signals follow the transport-layer heuristics
of Karagiannis et al. ("Transport layer identification of P2P traffic", IMC 2004), adapted
to what an endpoint sees in its socket tables rather than on the wire -- see policies/README.md.

Why a window: one snapshot catches only the connections open at that instant; a client
churns through peers, so the union over a few scans shows the swarm. Memory is bounded:
only processes with network activity in the window are kept, each per-scan set is capped
(`MAX_ITEMS`), and a process is forgotten as soon as a snapshot no longer lists it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from endpoint_agent.types import Connection, Direction, Endpoint, P2PFeatures, Snapshot

# Ports above 1024 that belong to well-known client/server services. Traffic on them is not a
# "peer" signal: a browser's thousand connections to :443 (TCP and QUIC) are not a swarm.
SERVICE_PORTS: frozenset[int] = frozenset(
    {
        1080, 1194, 1433, 1521, 1701, 1723, 1883, 1900, 2049, 3128, 3268, 3269, 3306, 3389,
        3478, 3479, 4500, 5060, 5061, 5222, 5223, 5228, 5349, 5353, 5355, 5432, 5671, 5672,
        5900, 6379, 6443, 8080, 8443, 8883, 9092, 9418, 11211, 27017,
        *range(19302, 19310),  # STUN of WebRTC (Google)
    }
)  # fmt: skip
BITTORRENT_PORTS: frozenset[int] = frozenset({*range(6881, 6890), 6969, 51413})
LPD_GROUP = "239.192.152.143"  # BEP 14 local service discovery (IPv4)
LPD_GROUP_V6 = "ff15::efc0:988f"
LPD_PORT = 6771
EPHEMERAL_FLOOR = 32768  # lowest first port of the common OS ephemeral ranges

DEFAULT_WINDOW_SCANS = 3
MAX_WINDOW_SCANS = 20
# Cap of each per-scan set per process: thresholds are tens of peers, so counting further only
# costs memory (a process with 100,000 sockets must not make the agent grow by as much).
MAX_ITEMS = 512
_SAMPLE_PEERS = 3
_CLOSED = frozenset({"TIME_WAIT", "CLOSE"})
_T = TypeVar("_T")


def is_peer_port(port: int) -> bool:
    """A port a peer-to-peer client would use: unprivileged and not a well-known service."""
    return port > 1024 and port not in SERVICE_PORTS


@dataclass(slots=True)
class ScanObservation:
    """What one scan showed of one process's sockets (sets capped at MAX_ITEMS)."""

    outbound: set[tuple[str, int]] = field(default_factory=set)  # remote peers it connected to
    inbound: set[tuple[str, int]] = field(default_factory=set)  # remote peers connected to it
    inbound_ports: set[int] = field(default_factory=set)  # its local ports those came in on
    tcp_listen: set[int] = field(default_factory=set)
    udp_bound: set[int] = field(default_factory=set)
    tcp_ips: set[str] = field(default_factory=set)
    udp_ips: set[str] = field(default_factory=set)
    bittorrent: set[int] = field(default_factory=set)
    lpd: bool = False

    def empty(self) -> bool:
        return not (
            self.outbound
            or self.inbound
            or self.tcp_listen
            or self.udp_bound
            or self.udp_ips
            or self.bittorrent
            or self.lpd
        )


def _add(target: set[_T], item: _T) -> None:
    if len(target) < MAX_ITEMS:
        target.add(item)


def _is_lpd(ep: Endpoint | None) -> bool:
    return ep is not None and (ep.ip in (LPD_GROUP, LPD_GROUP_V6) or ep.port == LPD_PORT)


def observe(connections: Iterable[Connection]) -> ScanObservation:
    """The facts one scan gives about the sockets of one process.

    Only ports a program chose count as its ports: the local port of a TCP listener (and of the
    connections it accepted), the remote port of a connection it made. The local port of an
    outbound connection, and the remote port of an inbound one, are ephemeral (Linux
    32768-60999, Windows/macOS 49152-65535, which holds 51413) and say nothing. A bound UDP
    port is believed only below those ranges.
    """
    obs = ScanObservation()
    for conn in connections:
        local, remote = conn.laddr, conn.raddr
        if conn.proto == "udp":
            obs.lpd = obs.lpd or _is_lpd(local) or _is_lpd(remote)
            if local is not None:
                if is_peer_port(local.port):
                    _add(obs.udp_bound, local.port)
                if local.port in BITTORRENT_PORTS and local.port < EPHEMERAL_FLOOR:
                    _add(obs.bittorrent, local.port)
            if remote is not None:
                if is_peer_port(remote.port):
                    _add(obs.udp_ips, remote.ip)
                if remote.port in BITTORRENT_PORTS:
                    _add(obs.bittorrent, remote.port)
            continue
        if local is None:
            continue
        if conn.direction is Direction.LISTEN:
            if is_peer_port(local.port):
                _add(obs.tcp_listen, local.port)
            if local.port in BITTORRENT_PORTS:
                _add(obs.bittorrent, local.port)
            continue
        if remote is None or conn.status in _CLOSED:
            continue
        if conn.direction is Direction.OUTBOUND:
            if remote.port in BITTORRENT_PORTS:
                _add(obs.bittorrent, remote.port)
            if is_peer_port(remote.port):
                _add(obs.outbound, (remote.ip, remote.port))
                _add(obs.tcp_ips, remote.ip)
        elif conn.direction is Direction.INBOUND:
            if local.port in BITTORRENT_PORTS:
                _add(obs.bittorrent, local.port)
            if is_peer_port(local.port):
                _add(obs.inbound, (remote.ip, remote.port))
                _add(obs.inbound_ports, local.port)
                _add(obs.tcp_ips, remote.ip)
    return obs


def network_of(ip: str) -> str:
    """The network a peer address belongs to, coarsely: its IPv4 /16 or its IPv6 /32.

    Servers a program depends on (a cluster, a gateway's backends, a scrape fleet) sit in a few
    networks; the peers of a swarm come from everywhere. /16 and /32 are wide enough that one
    site's subnets fold into one network, narrow enough that two internet hosts rarely share one.
    """
    if ":" in ip:
        if ip.startswith("::ffff:") and "." in ip:
            return network_of(ip[7:])
        try:
            packed = ipaddress.IPv6Address(ip).packed
        except ValueError:
            return ip
        return packed[:4].hex()
    head, _, rest = ip.partition(".")
    return f"{head}.{rest.partition('.')[0]}"


def _format_peer(peer: tuple[str, int]) -> str:
    return str(Endpoint(*peer))


def summarize(window: Iterable[ScanObservation]) -> P2PFeatures:
    """Union of the window's observations, as counts."""
    scans = 0
    outbound: set[tuple[str, int]] = set()
    inbound: set[tuple[str, int]] = set()
    inbound_ports: set[int] = set()
    tcp_listen: set[int] = set()
    udp_bound: set[int] = set()
    tcp_ips: set[str] = set()
    udp_ips: set[str] = set()
    bittorrent: set[int] = set()
    lpd = False
    for obs in window:
        scans += 1
        outbound |= obs.outbound
        inbound |= obs.inbound
        inbound_ports |= obs.inbound_ports
        tcp_listen |= obs.tcp_listen
        udp_bound |= obs.udp_bound
        tcp_ips |= obs.tcp_ips
        udp_ips |= obs.udp_ips
        bittorrent |= obs.bittorrent
        lpd = lpd or obs.lpd
    outbound_ips = {ip for ip, _ in outbound}
    inbound_ips = {ip for ip, _ in inbound}
    peer_ips = outbound_ips | inbound_ips | udp_ips
    samples = sorted(outbound)[:_SAMPLE_PEERS] + sorted(inbound)[:_SAMPLE_PEERS]
    return P2PFeatures(
        scans=scans,
        peers=len(peer_ips),
        outbound_peers=len(outbound),
        outbound_peer_ips=len(outbound_ips),
        outbound_peer_ports=len({port for _, port in outbound}),
        inbound_peers=len(inbound),
        inbound_peer_ips=len(inbound_ips),
        inbound_peer_ports=len({port for _, port in inbound}),
        listening_ports=tuple(sorted(inbound_ports)),
        tcp_udp_ports=tuple(sorted(tcp_listen & udp_bound)),
        tcp_udp_peers=len(tcp_ips & udp_ips),
        bittorrent_ports=tuple(sorted(bittorrent)),
        lpd=lpd,
        peer_networks=len({network_of(ip) for ip in peer_ips}),
        two_way_peers=len(outbound_ips & inbound_ips),
        sample_peers=tuple(_format_peer(p) for p in samples[:_SAMPLE_PEERS]),
    )


class BehaviourTracker:
    """Keeps the last `window_scans` observations of every process with network activity.

    Call `annotate(snapshot)` once per scan, in scan order: it returns the snapshot with
    `behaviour` filled for every process that had sockets in the window. The window is the
    policy's (`p2p.window_scans`); pass it to `annotate` so a new policy takes effect at once.
    Not thread-safe (one scan loop owns it).
    """

    def __init__(self, window_scans: int = DEFAULT_WINDOW_SCANS) -> None:
        self._window = _checked_window(window_scans)
        self._history: dict[tuple[int, float], deque[ScanObservation]] = {}

    @property
    def window_scans(self) -> int:
        return self._window

    @window_scans.setter
    def window_scans(self, value: int) -> None:
        """A new policy may ask for another window: keep what fits."""
        value = _checked_window(value)
        if value != self._window:
            self._window = value
            self._history = {key: deque(h, maxlen=value) for key, h in self._history.items()}

    def __len__(self) -> int:
        return len(self._history)

    def update(self, snapshot: Snapshot) -> dict[tuple[int, float], P2PFeatures]:
        if not snapshot.connections and not self._history:
            return {}  # nothing observed now or in the window (a policy without network rules)
        by_pid = _group_by_pid(snapshot.connections, snapshot.processes)
        seen: set[tuple[int, float]] = set()
        features: dict[tuple[int, float], P2PFeatures] = {}
        # Only processes with sockets now or a history: the others have nothing to observe, and
        # visiting them would make every scan cost a step per process.
        for pid in sorted(by_pid.keys() | {pid for pid, _ in self._history}):
            proc = snapshot.processes.get(pid)
            if proc is None:
                continue
            key = proc.key
            seen.add(key)
            conns = by_pid.get(pid)
            history = self._history.get(key)
            if conns is None and history is None:
                continue  # no sockets now or in the window: nothing to observe (most processes)
            obs = observe(conns or ())
            if history is None:
                if obs.empty():
                    continue  # never had sockets: nothing to remember
                history = self._history[key] = deque(maxlen=self._window)
            history.append(obs)
            if all(o.empty() for o in history):
                del self._history[key]  # quiet for a whole window
                continue
            features[key] = summarize(history)
        for key in self._history.keys() - seen:
            del self._history[key]  # exited (or its PID now names another process)
        return features

    def annotate(self, snapshot: Snapshot, window_scans: int | None = None) -> Snapshot:
        """The snapshot with `behaviour` filled; `window_scans` first adopts the active policy's window."""
        if window_scans is not None:
            self.window_scans = window_scans
        return dataclasses.replace(snapshot, behaviour=self.update(snapshot))


def _checked_window(value: int) -> int:
    if not 1 <= value <= MAX_WINDOW_SCANS:
        raise ValueError(f"window_scans must be between 1 and {MAX_WINDOW_SCANS}, not {value}")
    return value


def _group_by_pid(
    connections: Iterable[Connection], processes: Mapping[int, object]
) -> dict[int, list[Connection]]:
    out: dict[int, list[Connection]] = {}
    for conn in connections:
        if conn.pid is not None and conn.pid in processes:
            out.setdefault(conn.pid, []).append(conn)
    return out


__all__ = [
    "BITTORRENT_PORTS",
    "DEFAULT_WINDOW_SCANS",
    "LPD_GROUP",
    "LPD_PORT",
    "MAX_WINDOW_SCANS",
    "SERVICE_PORTS",
    "BehaviourTracker",
    "ScanObservation",
    "is_peer_port",
    "network_of",
    "observe",
    "summarize",
]
