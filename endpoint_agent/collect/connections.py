"""Sockets as the policy sees them: family, protocol, endpoints and a direction.

psutil reports sockets without saying who initiated a TCP connection. The direction is
inferred from the listening sockets of the same network namespace:

* TCP in state LISTEN, and UDP without a remote address (a bound "server" socket): LISTEN.
* Any other TCP socket (and connected UDP): INBOUND when its local (ip, port) is served by
  a listener of the same protocol and namespace -- the exact address or the wildcard
  (0.0.0.0 / ::) -- else OUTBOUND. Comparing the ip too keeps an outbound connection
  whose ephemeral port happens to equal a listening port on another address OUTBOUND.
  Known limit: an accepted connection whose listener was already closed reads OUTBOUND.

IPv4-mapped IPv6 addresses (a dual-stack socket talking to an IPv4 peer) are written as
plain IPv4 so an address rule such as 203.0.113.0/24 sees the peer for what it is;
`family` stays the socket's family.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any, NamedTuple

from endpoint_agent.types import Connection, Direction, Endpoint

_FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_PROTOS = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}
_WILDCARD = {"ipv4": "0.0.0.0", "ipv6": "::"}


class RawSocket(NamedTuple):
    """One inet socket before its direction is known (input of `classify`).

    A NamedTuple, not a dataclass: a scan builds thousands and tuples are built in C.
    """

    pid: int | None
    family: str  # "ipv4" | "ipv6"
    proto: str  # "tcp" | "udp"
    laddr: Endpoint | None
    raddr: Endpoint | None
    status: str
    netns: str | None = None


def from_psutil(conn: Any, netns: str | None = None) -> RawSocket | None:
    """Translate one psutil `sconn`/`pconn`; None for what the policy does not cover (AF_UNIX)."""
    family = _FAMILIES.get(conn.family)
    proto = _PROTOS.get(conn.type)
    if family is None or proto is None:
        return None
    return RawSocket(
        pid=getattr(conn, "pid", None),
        family=family,
        proto=proto,
        laddr=_endpoint(conn.laddr),
        raddr=_endpoint(conn.raddr),
        status=str(conn.status),
        netns=netns,
    )


def _endpoint(addr: Any) -> Endpoint | None:
    # Hot path (thousands of sockets per scan): unmap only what can be a mapped address.
    if not addr:
        return None
    ip = addr[0]
    if ip.startswith("::ffff:"):
        ip = unmap_ipv4(ip)
    return Endpoint(ip, addr[1])


def unmap_ipv4(ip: str) -> str:
    """'::ffff:10.1.2.3' -> '10.1.2.3'; anything else unchanged."""
    if ip.startswith("::ffff:") and "." in ip:
        try:
            mapped = ipaddress.IPv6Address(ip.split("%", 1)[0]).ipv4_mapped
        except ValueError:
            return ip
        if mapped is not None:
            return str(mapped)
    return ip


def _is_listener(sock: RawSocket) -> bool:
    if sock.proto == "tcp":
        return sock.status == "LISTEN"
    return sock.raddr is None


def classify(sockets: Iterable[RawSocket]) -> tuple[Connection, ...]:
    """Give every socket its direction (see the module docstring for the rule)."""
    items = list(sockets)
    listening: set[tuple[str | None, str, str, str, int]] = set()
    for sock in items:
        if sock.laddr is not None and _is_listener(sock):
            listening.add((sock.netns, sock.proto, sock.family, sock.laddr.ip, sock.laddr.port))
    return tuple(_connection(sock, listening) for sock in items)


def _connection(sock: RawSocket, listening: set[tuple[str | None, str, str, str, int]]) -> Connection:
    if _is_listener(sock):
        direction = Direction.LISTEN
    elif sock.laddr is not None and (
        (sock.netns, sock.proto, sock.family, sock.laddr.ip, sock.laddr.port) in listening
        or (sock.netns, sock.proto, sock.family, _WILDCARD[sock.family], sock.laddr.port) in listening
    ):
        direction = Direction.INBOUND
    else:
        direction = Direction.OUTBOUND
    return Connection(
        pid=sock.pid,
        family=sock.family,
        proto=sock.proto,
        laddr=sock.laddr,
        raddr=sock.raddr,
        status=sock.status,
        direction=direction,
        netns=sock.netns,
    )
