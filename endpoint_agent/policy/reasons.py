"""Human sentences for findings, built from their evidence.

process name 'qbittorrent' matched 'qbittorrent*' (rule p2p-qbittorrent)
connection 127.0.0.1:6881 (listen, tcp) matched local_port 6881-6889 (rule p2p-bittorrent-ports)
"""

from __future__ import annotations

from collections.abc import Sequence

from endpoint_agent.types import Connection, Evidence

_LABELS = {
    "name": "process name",
    "exe_name": "executable name",
    "path": "executable path",
    "sha256": "executable sha256",
    "cmdline": "command line text",
    "user": "user",
    "parent": "parent process",
}
# Shown in the connection's description already; named only when nothing else matched.
_IMPLIED = frozenset({"protocol", "direction"})


def describe_evidence(evidence: Evidence) -> str:
    label = _LABELS.get(evidence.attribute, evidence.attribute)
    if evidence.attribute == "sha256":  # an exact 64-digit match: saying it twice helps nobody
        return f"{label} {evidence.value}"
    return f"{label} {evidence.value!r} matched {evidence.pattern!r}"


def describe_connection(conn: Connection) -> str:
    if conn.raddr is None:
        where = str(conn.laddr) if conn.laddr else "?"
    elif conn.laddr is None:
        where = f"-> {conn.raddr}"
    else:
        where = f"{conn.laddr} -> {conn.raddr}"
    if conn.domain:
        where += f" [{conn.domain}]"
    return f"{where} ({conn.direction.value}, {conn.proto}){netns_suffix(conn)}"


def netns_suffix(conn: Connection) -> str:
    """' in network namespace net:[...]' for a socket outside the agent's namespace, else ''."""
    return f" in network namespace {conn.netns}" if conn.netns else ""


def process_reason(evidence: Sequence[Evidence], rule_id: str) -> str:
    return f"{' and '.join(describe_evidence(e) for e in evidence)} (rule {rule_id})"


def connection_reason(
    conn: Connection,
    network: Sequence[Evidence],
    process: Sequence[Evidence],
    rule_id: str,
    count: int,
) -> str:
    shown = [e for e in network if e.attribute not in _IMPLIED] or list(network)
    text = f"connection {describe_connection(conn)} matched " + " and ".join(
        f"{e.attribute} {e.pattern}" for e in shown
    )
    if process:
        text += "; " + " and ".join(describe_evidence(e) for e in process)
    more = f"; {count} matching connections" if count > 1 else ""
    return f"{text} (rule {rule_id}{more})"
