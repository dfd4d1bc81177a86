"""Scoring peer-to-peer behaviour: P2PFeatures (collect.behaviour) -> points, with the evidence.

Pure. Each signal is one point (local peer discovery two), and a rule's `network.p2p` matches
when the process met at least `min_peers` peers, scored at least `min_score`, and showed at
least one *peer* signal (marked * below). Why these signals, and why no single one of them is
enough, is in policies/README.md ("P2P behaviour").

    signal                                              points  what it separates
    connects to >= 3 peers on non-service high ports       1    a client of many hosts, off the service ports
    accepts >= 2 peers on a listening high port            1    a server of many hosts
    one connection per peer, ports as many as addresses    1    Karagiannis {IP, port}: peers, not web clients
  * peers in >= 4 networks (IPv4 /16, IPv6 /32)            1    swarms are scattered; servers sit in few nets
  * >= 2 peers met in both directions                      1    Karagiannis: a peer is client and server
  * TCP and UDP on one port / to the same peers            1    Karagiannis TCP/UDP: uTP and DHT beside TCP
  * a well-known BitTorrent port                           1    6881-6889, 6969, 51413 (program-chosen only)
  * local peer discovery                                   2    239.192.152.143:6771 is BitTorrent's alone

A web server with many clients, a browser with QUIC, a metrics scraper or a database score at
most 2. A gateway or proxy (clients in, backends out on distinct high ports) reaches 3 with the
fan-out signals alone, which is why a peer signal is required: its backends sit in one or two
networks and are never the hosts that call it.
"""

from __future__ import annotations

from dataclasses import dataclass

from endpoint_agent.types import P2PFeatures

OUTBOUND_MIN_IPS = 3
INBOUND_MIN_IPS = 2
PATTERN_MIN_IPS = 3
# {IP, port}: outbound peers listen on ports of their own choosing (ports ~ addresses); inbound
# peers each open one connection (source ports ~ addresses), where web clients open several.
OUTBOUND_MIN_PORT_RATIO = 0.5
INBOUND_MAX_PORT_RATIO = 2.0
LPD_POINTS = 2
SCATTERED_MIN_NETWORKS = 4
TWO_WAY_MIN_IPS = 2


@dataclass(frozen=True, slots=True)
class P2PScore:
    score: int
    peers: int
    signals: tuple[str, ...]  # one human phrase per signal that scored
    peer_signal: bool = False  # one of the signals fan-out alone does not produce

    def meets(self, min_score: int, min_peers: int) -> bool:
        return self.peer_signal and self.peers >= min_peers and self.score >= min_score


def _list(items: tuple[object, ...] | list[str], limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def score(f: P2PFeatures) -> P2PScore:
    points = 0
    signals: list[str] = []
    peer_signal = False
    if f.outbound_peer_ips >= OUTBOUND_MIN_IPS:
        points += 1
        signals.append(
            f"connects to {f.outbound_peer_ips} peers on {f.outbound_peer_ports} non-service high ports"
        )
    if f.inbound_peer_ips >= INBOUND_MIN_IPS and f.listening_ports:
        points += 1
        signals.append(f"accepts {f.inbound_peer_ips} peers on listening port {_list(f.listening_ports)}")
    out_pattern = (
        f.outbound_peer_ips >= PATTERN_MIN_IPS
        and f.outbound_peer_ports >= OUTBOUND_MIN_PORT_RATIO * f.outbound_peer_ips
    )
    in_pattern = (
        f.inbound_peer_ips >= PATTERN_MIN_IPS
        and f.inbound_peer_ports <= INBOUND_MAX_PORT_RATIO * f.inbound_peer_ips
    )
    if out_pattern or in_pattern:
        points += 1
        parts = []
        if out_pattern:
            parts.append(f"{f.outbound_peer_ips} addresses on {f.outbound_peer_ports} ports out")
        if in_pattern:
            parts.append(f"{f.inbound_peer_ips} addresses from {f.inbound_peer_ports} ports in")
        signals.append(f"one connection per peer ({' and '.join(parts)})")
    if f.peer_networks >= SCATTERED_MIN_NETWORKS:
        points += 1
        peer_signal = True
        signals.append(f"peers scattered over {f.peer_networks} networks")
    if f.two_way_peers >= TWO_WAY_MIN_IPS:
        points += 1
        peer_signal = True
        signals.append(f"{f.two_way_peers} peers met in both directions")
    if f.tcp_udp_ports or f.tcp_udp_peers:
        points += 1
        peer_signal = True
        what = f"on port {_list(f.tcp_udp_ports)}" if f.tcp_udp_ports else f"to {f.tcp_udp_peers} peers"
        signals.append(f"TCP and UDP {what}")
    if f.bittorrent_ports:
        points += 1
        peer_signal = True
        signals.append(f"BitTorrent port {_list(f.bittorrent_ports)}")
    if f.lpd:
        points += LPD_POINTS
        peer_signal = True
        signals.append("BitTorrent local peer discovery (239.192.152.143:6771)")
    return P2PScore(score=points, peers=f.peers, signals=tuple(signals), peer_signal=peer_signal)


def p2p_reason(result: P2PScore, f: P2PFeatures, *, min_score: int, min_peers: int) -> str:
    """'P2P behaviour over 3 scans: score 4 (min 3), 13 peers (min 8): connects to ...; peers e.g. ...'"""
    text = (
        f"P2P behaviour over {f.scans} scan{'s' if f.scans != 1 else ''}: score {result.score} "
        f"(min {min_score}), {result.peers} peers (min {min_peers}): {'; '.join(result.signals)}"
    )
    if f.sample_peers:
        text += f"; peers e.g. {_list(f.sample_peers)}"
    return text


__all__ = ["P2PScore", "p2p_reason", "score"]
