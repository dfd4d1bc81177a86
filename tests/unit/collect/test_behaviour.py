"""The P2P behaviour tracker: which sockets count as peers, the sliding window, bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from endpoint_agent.collect import behaviour
from endpoint_agent.collect.behaviour import BehaviourTracker, is_peer_port, observe, summarize
from endpoint_agent.types import Connection, Direction, Endpoint, ProcessInfo, Snapshot

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def proc(pid: int, create_time: float = 100.0) -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=1, name=f"p{pid}", create_time=create_time)


def tcp_out(pid: int | None, remote: tuple[str, int], status: str = "ESTABLISHED") -> Connection:
    return Connection(
        pid, "ipv4", "tcp", Endpoint("10.0.0.1", 50000), Endpoint(*remote), status, Direction.OUTBOUND
    )


def tcp_in(pid: int, local_port: int, remote: tuple[str, int]) -> Connection:
    return Connection(
        pid,
        "ipv4",
        "tcp",
        Endpoint("10.0.0.1", local_port),
        Endpoint(*remote),
        "ESTABLISHED",
        Direction.INBOUND,
    )


def tcp_listen(pid: int, port: int, ip: str = "0.0.0.0") -> Connection:
    return Connection(pid, "ipv4", "tcp", Endpoint(ip, port), None, "LISTEN", Direction.LISTEN)


def udp(pid: int, port: int, remote: tuple[str, int] | None = None, ip: str = "0.0.0.0") -> Connection:
    direction = Direction.OUTBOUND if remote else Direction.LISTEN
    raddr = Endpoint(*remote) if remote else None
    return Connection(pid, "ipv4", "udp", Endpoint(ip, port), raddr, "NONE", direction)


def snap(procs: list[ProcessInfo], conns: list[Connection]) -> Snapshot:
    return Snapshot(taken_at=T0, processes={p.pid: p for p in procs}, connections=tuple(conns))


def swarm_conns(pid: int, first: int, count: int) -> list[Connection]:
    return [tcp_out(pid, (f"198.51.100.{i}", 40000 + i)) for i in range(first, first + count)]


def test_peer_ports_exclude_privileged_and_well_known_services() -> None:
    assert is_peer_port(51413) and is_peer_port(40001) and is_peer_port(6881)
    for port in (80, 443, 1024, 3478, 5222, 8080, 8443, 9418, 19305):
        assert not is_peer_port(port), port


def test_outbound_peers_count_only_peer_ports() -> None:
    obs = observe(
        [
            tcp_out(1, ("198.51.100.1", 40001)),
            tcp_out(1, ("198.51.100.1", 40002)),
            tcp_out(
                1,
                (
                    "198.51.100.2",
                    40001,
                ),
                status="SYN_SENT",
            ),
            tcp_out(1, ("198.51.100.3", 443)),
            tcp_out(1, ("198.51.100.4", 22)),
            tcp_out(1, ("198.51.100.5", 8080)),
            tcp_out(1, ("198.51.100.6", 40003), status="TIME_WAIT"),
        ]
    )
    f = summarize([obs])
    assert (f.outbound_peers, f.outbound_peer_ips, f.outbound_peer_ports) == (3, 2, 2)
    assert f.peers == 2 and f.inbound_peers == 0
    assert f.sample_peers == ("198.51.100.1:40001", "198.51.100.1:40002", "198.51.100.2:40001")


def test_inbound_peers_on_a_listening_high_port() -> None:
    obs = observe(
        [
            tcp_listen(1, 40100),
            tcp_in(1, 40100, ("198.51.100.7", 50001)),
            tcp_in(1, 40100, ("198.51.100.8", 50002)),
            tcp_in(1, 40100, ("198.51.100.8", 50003)),
            tcp_listen(1, 443),
            tcp_in(1, 443, ("198.51.100.9", 50004)),  # a service port: not a peer
        ]
    )
    f = summarize([obs])
    assert (f.inbound_peers, f.inbound_peer_ips, f.inbound_peer_ports) == (3, 2, 3)
    assert f.listening_ports == (40100,)
    assert f.peers == 2


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("198.51.100.7", "198.51"),
        ("127.31.4.9", "127.31"),
        ("::ffff:203.0.113.5", "203.0"),
        ("2001:db8:1:2::5", "20010db8"),
        ("2001:db8:ffff::1", "20010db8"),
        ("fe80::1%eth0", "fe800000"),
        ("zz::", "zz::"),  # not an address: itself
    ],
)
def test_network_of_folds_a_site_into_one_network(ip: str, network: str) -> None:
    assert behaviour.network_of(ip) == network


def test_peer_networks_and_peers_met_both_ways() -> None:
    obs = observe(
        [
            tcp_listen(1, 40100),
            tcp_out(1, ("198.51.100.1", 40001)),
            tcp_out(1, ("203.0.113.2", 40002)),
            tcp_out(1, ("192.0.2.3", 40003)),
            tcp_in(1, 40100, ("198.51.100.1", 50001)),  # dialled and dialling: a peer both ways
            tcp_in(1, 40100, ("198.51.7.4", 50002)),  # same /16 as the first
        ]
    )
    f = summarize([obs])
    assert f.peers == 4
    assert f.peer_networks == 3
    assert f.two_way_peers == 1


def test_tcp_and_udp_on_one_port_and_to_one_peer() -> None:
    obs = observe(
        [
            tcp_listen(1, 40200),
            udp(1, 40200),
            udp(1, 53000, remote=("198.51.100.1", 40001)),
            tcp_out(1, ("198.51.100.1", 40001)),
            udp(1, 5353),  # mDNS: a service port on both sides
            tcp_listen(1, 5353),
        ]
    )
    f = summarize([obs])
    assert f.tcp_udp_ports == (40200,)
    assert f.tcp_udp_peers == 1


def test_quic_to_443_is_not_tcp_udp_peering() -> None:
    f = summarize([observe([tcp_out(1, ("198.51.100.1", 443)), udp(1, 53001, remote=("198.51.100.1", 443))])])
    assert (f.tcp_udp_peers, f.peers, f.tcp_udp_ports) == (0, 0, ())


def test_bittorrent_ports_and_local_peer_discovery() -> None:
    f = summarize(
        [
            observe(
                [
                    tcp_listen(1, 51413),
                    tcp_out(1, ("198.51.100.1", 6969)),
                    udp(1, 6881),
                    udp(1, 53000, remote=("198.51.100.2", 6882)),
                ]
            )
        ]
    )
    assert f.bittorrent_ports == (6881, 6882, 6969, 51413)
    assert not f.lpd
    assert summarize([observe([udp(1, 6771, ip="239.192.152.143")])]).lpd
    assert summarize([observe([udp(1, 41000, remote=("239.192.152.143", 6771))])]).lpd


def test_ephemeral_ports_are_not_bittorrent_ports() -> None:
    """51413 is inside the ephemeral ranges: only a port the program chose counts."""
    outbound_from_51413 = Connection(
        1, "ipv4", "tcp", Endpoint("10.0.0.1", 51413), Endpoint("198.51.100.1", 443), "ESTABLISHED",
        Direction.OUTBOUND,
    )  # fmt: skip
    inbound_from_6881 = tcp_in(1, 40000, ("198.51.100.2", 6881))
    dns_client = udp(1, 51413)
    f = summarize([observe([outbound_from_51413, inbound_from_6881, dns_client])])
    assert f.bittorrent_ports == ()


def test_window_is_the_union_of_the_last_scans() -> None:
    tracker = BehaviourTracker(window_scans=2)
    p = proc(10)
    first = tracker.update(snap([p], swarm_conns(10, 1, 3)))
    assert first[p.key].outbound_peer_ips == 3 and first[p.key].scans == 1
    second = tracker.update(snap([p], swarm_conns(10, 4, 3)))
    assert second[p.key].outbound_peer_ips == 6 and second[p.key].scans == 2
    third = tracker.update(snap([p], swarm_conns(10, 7, 1)))
    assert third[p.key].outbound_peer_ips == 4  # scans 2 and 3 only


def test_processes_without_sockets_get_no_features() -> None:
    tracker = BehaviourTracker()
    quiet, busy = proc(1), proc(2)
    out = tracker.update(snap([quiet, busy], swarm_conns(2, 1, 1)))
    assert set(out) == {busy.key}
    assert len(tracker) == 1


def test_exited_process_is_forgotten_and_a_reused_pid_starts_fresh() -> None:
    tracker = BehaviourTracker(window_scans=3)
    old = proc(20, create_time=100.0)
    tracker.update(snap([old], swarm_conns(20, 1, 5)))
    new = proc(20, create_time=200.0)  # same PID, another process
    out = tracker.update(snap([new], swarm_conns(20, 50, 1)))
    assert old.key not in out
    assert out[new.key].outbound_peer_ips == 1
    tracker.update(snap([], []))
    assert len(tracker) == 0


def test_process_quiet_for_a_whole_window_is_dropped() -> None:
    tracker = BehaviourTracker(window_scans=2)
    p = proc(30)
    tracker.update(snap([p], swarm_conns(30, 1, 2)))
    assert p.key in tracker.update(snap([p], []))  # still in the window
    assert p.key not in tracker.update(snap([p], []))
    assert len(tracker) == 0


def test_sockets_without_a_known_owner_are_ignored() -> None:
    tracker = BehaviourTracker()
    out = tracker.update(snap([proc(1)], [tcp_out(None, ("198.51.100.1", 40001)), *swarm_conns(99, 1, 3)]))
    assert out == {}


def test_per_scan_sets_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(behaviour, "MAX_ITEMS", 5)
    f = summarize([observe(swarm_conns(1, 1, 50))])
    assert f.outbound_peers == 5


def test_window_can_change_and_is_validated() -> None:
    tracker = BehaviourTracker(window_scans=3)
    p = proc(40)
    for i in range(3):
        tracker.update(snap([p], swarm_conns(40, 10 * i, 2)))
    tracker.window_scans = 1
    out = tracker.update(snap([p], swarm_conns(40, 100, 2)))
    assert out[p.key].outbound_peer_ips == 2 and out[p.key].scans == 1
    with pytest.raises(ValueError, match="window_scans"):
        tracker.window_scans = 0
    with pytest.raises(ValueError, match="window_scans"):
        BehaviourTracker(window_scans=behaviour.MAX_WINDOW_SCANS + 1)


def test_annotate_returns_a_new_snapshot_with_behaviour() -> None:
    tracker = BehaviourTracker()
    p = proc(50)
    original = snap([p], swarm_conns(50, 1, 4))
    annotated = tracker.annotate(original)
    assert original.behaviour == {}
    assert annotated.behaviour[p.key].outbound_peer_ips == 4
    assert annotated.processes is original.processes and annotated.connections is original.connections
