"""Direction and address rules of `classify` / `from_psutil` (pure functions, table-driven)."""

from __future__ import annotations

import socket
from collections import namedtuple

import pytest

from endpoint_agent.collect.connections import RawSocket, classify, from_psutil, unmap_ipv4
from endpoint_agent.types import Direction, Endpoint

# The shape psutil.net_connections() returns (psutil's own namedtuple is private).
SConn = namedtuple("SConn", "fd family type laddr raddr status pid")
Addr = namedtuple("Addr", "ip port")


def tcp(
    laddr: tuple[str, int], raddr: tuple[str, int] | None, status: str, netns: str | None = None
) -> RawSocket:
    family = "ipv6" if ":" in laddr[0] else "ipv4"
    return RawSocket(
        pid=10, family=family, proto="tcp", laddr=Endpoint(*laddr),
        raddr=Endpoint(*raddr) if raddr else None, status=status, netns=netns,
    )  # fmt: skip


def udp(laddr: tuple[str, int], raddr: tuple[str, int] | None = None) -> RawSocket:
    family = "ipv6" if ":" in laddr[0] else "ipv4"
    return RawSocket(10, family, "udp", Endpoint(*laddr), Endpoint(*raddr) if raddr else None, "NONE")


def directions(*socks: RawSocket) -> list[Direction]:
    return [c.direction for c in classify(socks)]


def test_tcp_listen_is_listen() -> None:
    assert directions(tcp(("127.0.0.1", 8080), None, "LISTEN")) == [Direction.LISTEN]


def test_unconnected_udp_is_listen_and_connected_udp_is_outbound() -> None:
    assert directions(udp(("::1", 5353)), udp(("127.0.0.1", 40000), ("127.0.0.1", 53))) == [
        Direction.LISTEN,
        Direction.OUTBOUND,
    ]


def test_connected_udp_on_a_bound_udp_port_is_inbound() -> None:
    socks = (udp(("0.0.0.0", 443)), udp(("127.0.0.1", 443), ("127.0.0.1", 50000)))
    assert directions(*socks) == [Direction.LISTEN, Direction.INBOUND]


@pytest.mark.parametrize(
    ("listen_ip", "local_ip", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", Direction.INBOUND),
        ("0.0.0.0", "127.0.0.1", Direction.INBOUND),
        ("0.0.0.0", "192.0.2.5", Direction.INBOUND),
        ("::", "::1", Direction.INBOUND),
        ("::1", "::1", Direction.INBOUND),
        # the same port on another address is an ephemeral port of an outbound connection
        ("127.0.0.2", "127.0.0.1", Direction.OUTBOUND),
        ("::1", "fe80::1", Direction.OUTBOUND),
    ],
)
def test_tcp_connection_is_inbound_only_on_a_listening_address(
    listen_ip: str, local_ip: str, expected: Direction
) -> None:
    socks = (tcp((listen_ip, 6881), None, "LISTEN"), tcp((local_ip, 6881), (local_ip, 51000), "ESTABLISHED"))
    assert directions(*socks)[1] == expected


def test_client_end_of_a_local_connection_is_outbound() -> None:
    socks = (
        tcp(("127.0.0.1", 6881), None, "LISTEN"),
        tcp(("127.0.0.1", 51000), ("127.0.0.1", 6881), "ESTABLISHED"),
        tcp(("127.0.0.1", 6881), ("127.0.0.1", 51000), "ESTABLISHED"),
    )
    assert directions(*socks) == [Direction.LISTEN, Direction.OUTBOUND, Direction.INBOUND]


def test_ipv4_wildcard_listener_does_not_serve_ipv6_sockets() -> None:
    socks = (tcp(("0.0.0.0", 6881), None, "LISTEN"), tcp(("::1", 6881), ("::1", 40000), "ESTABLISHED"))
    assert directions(*socks)[1] == Direction.OUTBOUND


def test_udp_socket_does_not_make_a_tcp_connection_inbound() -> None:
    socks = (udp(("0.0.0.0", 6881)), tcp(("127.0.0.1", 6881), ("127.0.0.1", 40000), "ESTABLISHED"))
    assert directions(*socks)[1] == Direction.OUTBOUND


def test_listener_of_another_network_namespace_does_not_count() -> None:
    socks = (
        tcp(("0.0.0.0", 6881), None, "LISTEN", netns="net:[4026532000]"),
        tcp(("127.0.0.1", 6881), ("127.0.0.1", 40000), "ESTABLISHED"),
        tcp(("127.0.0.1", 6881), ("127.0.0.1", 40001), "ESTABLISHED", netns="net:[4026532000]"),
    )
    assert directions(*socks) == [Direction.LISTEN, Direction.OUTBOUND, Direction.INBOUND]


def test_from_psutil_translates_fields() -> None:
    conn = SConn(
        3, socket.AF_INET6, socket.SOCK_STREAM, Addr("::1", 22), Addr("::1", 50000), "ESTABLISHED", 42
    )
    sock = from_psutil(conn)
    assert sock == RawSocket(42, "ipv6", "tcp", Endpoint("::1", 22), Endpoint("::1", 50000), "ESTABLISHED")


def test_from_psutil_empty_remote_is_none_and_unix_is_skipped() -> None:
    bound = SConn(3, socket.AF_INET, socket.SOCK_DGRAM, Addr("0.0.0.0", 68), (), "NONE", None)
    assert from_psutil(bound) == RawSocket(None, "ipv4", "udp", Endpoint("0.0.0.0", 68), None, "NONE")
    unix = SConn(3, socket.AF_UNIX, socket.SOCK_STREAM, "/run/x.sock", "", "NONE", 1)
    assert from_psutil(unix) is None


def test_ipv4_mapped_addresses_are_written_as_ipv4() -> None:
    conn = SConn(
        3, socket.AF_INET6, socket.SOCK_STREAM, Addr("::ffff:127.0.0.1", 6881),
        Addr("::ffff:203.0.113.7", 51413), "ESTABLISHED", 7,
    )  # fmt: skip
    sock = from_psutil(conn)
    assert sock is not None
    assert (sock.family, sock.laddr, sock.raddr) == (
        "ipv6", Endpoint("127.0.0.1", 6881), Endpoint("203.0.113.7", 51413),
    )  # fmt: skip
    # ... and a dual-stack wildcard listener still makes the accepted end inbound
    listener = from_psutil(SConn(4, socket.AF_INET6, socket.SOCK_STREAM, Addr("::", 6881), (), "LISTEN", 7))
    assert listener is not None
    assert directions(listener, sock) == [Direction.LISTEN, Direction.INBOUND]


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:zz.1", "::ffff:zz.1"),
    ],
)
def test_unmap_ipv4(ip: str, expected: str) -> None:
    assert unmap_ipv4(ip) == expected


def test_connection_keeps_pid_status_and_namespace() -> None:
    (conn,) = classify([tcp(("127.0.0.1", 1), ("127.0.0.1", 2), "SYN_SENT", netns="net:[1]")])
    assert (conn.pid, conn.status, conn.netns, conn.proto, conn.family) == (
        10,
        "SYN_SENT",
        "net:[1]",
        "tcp",
        "ipv4",
    )
