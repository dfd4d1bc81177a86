"""The `network.p2p` condition: validation, compilation, scoring and the finding it makes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from endpoint_agent.collect import behaviour
from endpoint_agent.errors import PolicyValidationError
from endpoint_agent.policy import compile_policy, evaluate, parse_policy
from endpoint_agent.policy.model import P2P_MAX_SCORE, P2P_MAX_WINDOW_SCANS
from endpoint_agent.policy.p2p import score
from endpoint_agent.types import Connection, Direction, Endpoint, P2PFeatures, ProcessInfo, Snapshot

QUIET = P2PFeatures(
    scans=3,
    peers=0,
    outbound_peers=0,
    outbound_peer_ips=0,
    outbound_peer_ports=0,
    inbound_peers=0,
    inbound_peer_ips=0,
    inbound_peer_ports=0,
)
SWARM = replace(
    QUIET,
    peers=12,
    outbound_peers=6,
    outbound_peer_ips=6,
    outbound_peer_ports=6,
    inbound_peers=6,
    inbound_peer_ips=6,
    inbound_peer_ports=6,
    listening_ports=(40002,),
    tcp_udp_ports=(40002,),
    sample_peers=("203.0.113.1:41001",),
)


def _policy(p2p: str, extra: str = "") -> str:
    rule = f"{{id: b, category: p2p, action: block, network: {{p2p: {p2p}{extra}}}}}"
    return f"name: t\nversion: 1\nrules:\n  - {rule}\n"


def _proc(pid: int = 7) -> ProcessInfo:
    return ProcessInfo(
        pid=pid, ppid=1, name="notes-sync", exe="/home/a/notes-sync", uid=1000, create_time=5.0
    )


def _snapshot(features: P2PFeatures | None, conns: tuple[Connection, ...] = ()) -> Snapshot:
    proc = _proc()
    return Snapshot(
        taken_at=datetime(2024, 1, 1, tzinfo=UTC),
        processes={proc.pid: proc},
        connections=conns,
        behaviour={proc.key: features} if features else {},
    )


LISTENER = Connection(7, "ipv4", "tcp", Endpoint("0.0.0.0", 40002), None, "LISTEN", Direction.LISTEN)


# -- scoring --------------------------------------------------------------------------------


def test_each_signal_scores_and_explains_itself() -> None:
    result = score(replace(SWARM, bittorrent_ports=(6881,), lpd=True, peer_networks=9, two_way_peers=3))
    assert result.score == P2P_MAX_SCORE == 9
    assert result.peers == 12
    assert result.signals == (
        "connects to 6 peers on 6 non-service high ports",
        "accepts 6 peers on listening port 40002",
        "one connection per peer (6 addresses on 6 ports out and 6 addresses from 6 ports in)",
        "peers scattered over 9 networks",
        "3 peers met in both directions",
        "TCP and UDP on port 40002",
        "BitTorrent port 6881",
        "BitTorrent local peer discovery (239.192.152.143:6771)",
    )


@pytest.mark.parametrize(
    ("features", "points"),
    [
        (QUIET, 0),
        # a web server: many clients, one connection each, no peers of its own
        (replace(QUIET, peers=30, inbound_peer_ips=30, inbound_peer_ports=30, listening_ports=(18080,)), 2),
        # the same clients opening several connections each: no {IP, port} pattern
        (replace(QUIET, peers=30, inbound_peer_ips=10, inbound_peer_ports=40, listening_ports=(18080,)), 1),
        # a scraper: many hosts, one port
        (replace(QUIET, peers=20, outbound_peer_ips=20, outbound_peer_ports=1), 1),
        # below the per-signal minimums
        (replace(QUIET, peers=2, outbound_peer_ips=2, outbound_peer_ports=2, inbound_peer_ips=1), 0),
    ],
)
def test_benign_shapes_score_low(features: P2PFeatures, points: int) -> None:
    assert score(features).score == points


GATEWAY = replace(
    QUIET,
    peers=30,
    outbound_peers=10,
    outbound_peer_ips=10,
    outbound_peer_ports=10,
    inbound_peers=20,
    inbound_peer_ips=20,
    inbound_peer_ports=20,
    listening_ports=(18443,),
    peer_networks=1,
)
EVASIVE_LEECHER = replace(
    QUIET, peers=10, outbound_peers=10, outbound_peer_ips=10, outbound_peer_ports=10, peer_networks=10
)


def test_a_gateway_scores_on_fan_out_alone_and_is_not_a_peer() -> None:
    """Clients in, backends out on distinct high ports, all in one network: 3 points, no peer signal."""
    result = score(GATEWAY)
    assert result.score == 3
    assert not result.peer_signal
    assert not result.meets(3, 8)


def test_a_tracker_only_leecher_is_a_peer_by_its_scattered_peers() -> None:
    """Renamed, tracker only, no inbound, no UDP, no BitTorrent port: scattered peers give it away."""
    result = score(EVASIVE_LEECHER)
    assert result.score == 3
    assert result.peer_signal
    assert result.meets(3, 8)
    assert "peers scattered over 10 networks" in result.signals


def test_peers_met_both_ways_are_a_peer_signal() -> None:
    result = score(replace(GATEWAY, two_way_peers=5))
    assert result.score == 4
    assert result.peer_signal


def test_meets_needs_both_score_and_peers() -> None:
    result = score(SWARM)
    assert result.meets(4, 12)
    assert not result.meets(5, 12)
    assert not result.meets(4, 13)


# -- the language -----------------------------------------------------------------------------


def test_defaults_and_window() -> None:
    compiled = compile_policy(parse_policy(_policy("{}"), "p.yaml"))
    network = compiled.policy.rules[0].network
    assert network is not None and network.p2p is not None
    cond = network.p2p
    assert (cond.min_score, cond.min_peers, cond.window_scans) == (3, 8, 3)
    assert compiled.p2p_window_scans == 3
    assert compile_policy(parse_policy("name: t\nversion: 1\n", "p.yaml")).p2p_window_scans is None


def test_window_is_the_largest_of_the_enabled_rules() -> None:
    text = (
        "name: t\nversion: 1\nrules:\n"
        "  - {id: a, action: report, network: {p2p: {window_scans: 2}}}\n"
        "  - {id: b, action: report, network: {p2p: {window_scans: 5}}}\n"
        "  - {id: c, action: report, enabled: false, network: {p2p: {window_scans: 9}}}\n"
    )
    assert compile_policy(parse_policy(text, "p.yaml")).p2p_window_scans == 5


def test_limits_agree_with_the_tracker() -> None:
    assert P2P_MAX_WINDOW_SCANS == behaviour.MAX_WINDOW_SCANS


@pytest.mark.parametrize(
    ("p2p", "field"),
    [
        ("{min_score: 0}", "min_score"),
        (f"{{min_score: {P2P_MAX_SCORE + 1}}}", "min_score"),
        ("{min_peers: 0}", "min_peers"),
        (f"{{window_scans: {P2P_MAX_WINDOW_SCANS + 1}}}", "window_scans"),
        ("{min_score: '3'}", "min_score"),
        ("{min_sore: 3}", "min_sore"),
        ("true", "p2p"),
    ],
)
def test_bad_p2p_values_are_one_line_errors(p2p: str, field: str) -> None:
    with pytest.raises(PolicyValidationError) as info:
        parse_policy(_policy(p2p), "p.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("p.yaml: ") and "rule 'b'" in message, message
    assert field in message, message


# -- the engine -------------------------------------------------------------------------------


def test_finding_carries_the_score_the_evidence_and_the_listener() -> None:
    compiled = compile_policy(parse_policy(_policy("{}"), "p.yaml"))
    [finding] = evaluate(_snapshot(SWARM, (LISTENER,)), compiled)
    assert finding.rule_id == "b" and finding.connection == LISTENER
    assert finding.reason.startswith("P2P behaviour over 3 scans: score 4 (min 3), 12 peers (min 8): ")
    tail = "; peers e.g. 203.0.113.1:41001; socket 0.0.0.0:40002 (listen, tcp) (rule b)"
    assert finding.reason.endswith(tail)
    assert finding.evidence[0].attribute == "p2p" and finding.evidence[0].value == "score 4, 12 peers"


def test_no_behaviour_or_below_threshold_no_finding() -> None:
    compiled = compile_policy(parse_policy(_policy("{min_score: 5}"), "p.yaml"))
    assert evaluate(_snapshot(None, (LISTENER,)), compiled) == []
    assert evaluate(_snapshot(SWARM, (LISTENER,)), compiled) == []


def test_a_socket_in_another_namespace_is_named() -> None:
    compiled = compile_policy(parse_policy(_policy("{}"), "p.yaml"))
    netns = "net:[4026532246]"
    [finding] = evaluate(_snapshot(SWARM, (replace(LISTENER, netns=netns),)), compiled)
    assert f"in network namespace {netns}" in finding.reason
    assert finding.connection is not None and finding.connection.netns == netns


def test_other_network_keys_must_match_a_connection() -> None:
    compiled = compile_policy(parse_policy(_policy("{}", ", protocol: udp"), "p.yaml"))
    assert evaluate(_snapshot(SWARM, (LISTENER,)), compiled) == []
    # with p2p alone, a process whose peers are all in the window's past is still reported
    compiled = compile_policy(parse_policy(_policy("{}"), "p.yaml"))
    [finding] = evaluate(_snapshot(SWARM), compiled)
    assert finding.connection is None
