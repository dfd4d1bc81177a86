"""The collector's socket source on Linux: the sockets of every network namespace.

psutil sees the agent's own namespace only, so a client started with `unshare --net`, in a
container or in a VPN namespace would be invisible to the policy. This source reads the
tables of one process per namespace (collect.netns) and joins sockets to their processes by
inode, for all the processes of the scan. Sockets of the agent's own namespace get
`netns=None`; the others carry the namespace id ("net:[4026532246]") into `Connection.netns`,
and from there into the finding's reason.

    collector = Collector(sockets=all_namespace_sockets)
"""

from __future__ import annotations

from collections.abc import Mapping

from endpoint_agent.collect.connections import RawSocket, unmap_ipv4
from endpoint_agent.collect.netns import collect_all_namespaces
from endpoint_agent.types import Endpoint, ProcessInfo


def _unmapped(ep: Endpoint | None) -> Endpoint | None:
    """Like psutil via connections.from_psutil: '::ffff:a.b.c.d' peers read as IPv4."""
    if ep is None:
        return None
    ip = unmap_ipv4(ep.ip)
    return ep if ip == ep.ip else Endpoint(ip, ep.port)


def all_namespace_sockets(processes: Mapping[int, ProcessInfo]) -> list[RawSocket]:
    """Every inet socket of every namespace the scanned processes live in (a `SocketSource`).

    OSError from /proc means the scan cannot see sockets at all; the Collector turns it into a
    CollectError. Single vanished or denied processes are skipped by collect.netns.
    """
    out: list[RawSocket] = []
    for ns in collect_all_namespaces(processes.keys()):
        netns = None if ns.is_host else ns.netns_id
        for item in ns.records:
            rec = item.record
            out.append(
                RawSocket(
                    pid=item.pid,
                    family=rec.family,
                    proto=rec.proto,
                    laddr=_unmapped(rec.laddr),
                    raddr=_unmapped(rec.raddr),
                    status=rec.status,
                    netns=netns,
                )
            )
    return out
